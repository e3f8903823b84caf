"""Fixtures for the manifest tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from policy_helpers import write_app


@pytest.fixture
def app(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(toml: str, files: Mapping[str, str] | None = None) -> Path:
        return write_app(tmp_path / f"app{next(counter)}", toml, files)

    return make
