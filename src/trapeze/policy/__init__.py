"""Manifest (``trapeze.toml``) loading and validation; see docs/manifest.md for the schema."""

from trapeze.policy.check import check_app
from trapeze.policy.manifest import MANIFEST_NAME, load_manifest, validate_manifest
from trapeze.policy.policy_module import load_policy_module
from trapeze.policy.specs import (
    RESPONSE_CHANNEL,
    ChannelSpec,
    DeclassifierSpec,
    FunctionSpec,
    LimitsSpec,
    Manifest,
    ManifestError,
    PrincipalSpec,
    Problem,
    RouteSpec,
    StreamSpec,
    WorkflowSpec,
)

__all__ = [
    "MANIFEST_NAME",
    "RESPONSE_CHANNEL",
    "ChannelSpec",
    "DeclassifierSpec",
    "FunctionSpec",
    "LimitsSpec",
    "Manifest",
    "ManifestError",
    "PrincipalSpec",
    "Problem",
    "RouteSpec",
    "StreamSpec",
    "WorkflowSpec",
    "check_app",
    "load_manifest",
    "load_policy_module",
    "validate_manifest",
]
