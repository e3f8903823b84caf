"""Fixtures live in ray_helpers.py (a unique module name: the test folders share sys.path)."""

from ray_helpers import (  # noqa: F401
    ray_app,
    ray_cluster,
    ray_platform,
    smtp_server,
    web_server,
)
