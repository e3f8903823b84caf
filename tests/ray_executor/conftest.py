"""The fixtures live in ray_helpers.py (shared with the test modules, which import helpers
from it too)."""

from ray_executor.ray_helpers import (  # noqa: F401
    ray_app,
    ray_cluster,
    ray_platform,
    smtp_server,
    web_server,
)
