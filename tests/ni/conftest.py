"""Fixtures and budgets of the noninterference suite.

Budgets (examples per property), default and long:

    python -m pytest tests/ni -q                                  # 75-120 s on 2 shared cores
    TRAPEZE_NI_EXAMPLES=2000 python -m pytest tests/ni -q         # the long run
    python -m pytest tests/ni -q --hypothesis-profile=ni-long     # the same, as a profile
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ni.harness import Worlds

DEFAULT_EXAMPLES = 40
EXAMPLES = int(os.environ.get("TRAPEZE_NI_EXAMPLES", DEFAULT_EXAMPLES))

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile("ni-default", max_examples=EXAMPLES, **_common)
settings.register_profile("ni-long", max_examples=max(EXAMPLES, 2000), **_common)


def ni_examples() -> int:
    """The property budget: the active ni-* profile's, or TRAPEZE_NI_EXAMPLES."""
    current = settings.default
    return max(EXAMPLES, current.max_examples if current.max_examples > 100 else 0)


@pytest.fixture(scope="session")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    root: Path = tmp_path_factory.mktemp("ni")
    w = Worlds(root)
    try:
        yield w
    finally:
        w.close()
