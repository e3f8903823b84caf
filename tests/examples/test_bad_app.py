"""bad_app end to end through the HTTP gateway: the paper's one-bit-per-request attack.

The attacker program is examples/bad_app/attack.py itself: a public principal sends one
request per bit, 64 at once per round, to a function whose code is the attacker's, and
reads back everything that reaches `public` (replies, the store, its own HTTP server and
mailbox, logs, audit). IFC off: it recovers the secret exactly over every channel. IFC on:
its whole observation is byte-identical for a secret and its complement, while the owner,
at `secret`, can see that the injected code did run and tried every channel.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ATTACK = Path(__file__).resolve().parents[2] / "examples" / "bad_app" / "attack.py"

# Few one bits: in the baseline each one bit of the loop round costs a whole function
# timeout, one after another (one warm worker per function). The IFC runs use this secret
# and its complement, so every single bit differs between them.
SECRET = 0x8000_0400_0020_0801
COMPLEMENT = SECRET ^ (2**64 - 1)
SETTLE = 1.5


def _load_attack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bad_app_attack", ATTACK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def attack() -> ModuleType:
    return _load_attack()


@pytest.fixture(scope="module")
def sinks(attack: ModuleType) -> Iterator[Any]:
    with attack.attacker_sinks() as s:
        yield s


@pytest.fixture(scope="module")
def ifc_runs(attack: ModuleType, sinks: Any) -> tuple[Any, Any]:
    one = attack.run_attack(SECRET, ifc=True, sinks=sinks, settle=SETTLE)
    two = attack.run_attack(COMPLEMENT, ifc=True, sinks=sinks, settle=SETTLE)
    return one, two


def test_ifc_off_the_attacker_recovers_the_secret_over_every_channel(
    attack: ModuleType, sinks: Any
) -> None:
    run = attack.run_attack(SECRET, ifc=False, sinks=sinks, settle=SETTLE)
    assert set(run.guesses) == set(attack.CHANNELS)
    wrong = {name: hex(g) for name, g in run.guesses.items() if g != SECRET}
    assert not wrong, f"baseline channels that did not carry the secret: {wrong}"
    assert run.guess == SECRET and run.exact


def test_ifc_on_observations_are_byte_identical_for_two_secrets(ifc_runs: Any) -> None:
    one, two = ifc_runs
    assert one.canonical == two.canonical, _first_difference(one.observation,
                                                              two.observation)
    assert one.guesses == two.guesses and one.guess == two.guess


def test_ifc_on_the_attacker_sees_nothing_but_withheld_replies(attack: ModuleType,
                                                               ifc_runs: Any) -> None:
    obs = ifc_runs[0].observation
    for how, replies in obs["replies"].items():
        assert len(replies) == 64
        for status, trapeze_status, _, body in replies:
            assert (status, trapeze_status) == (202, "withheld"), how
            assert json.loads(body)["status"] == "withheld"
    # The public writes made before the raise are there, untouched; nothing else is.
    assert obs["store"] == {"leak": [], "marks": [f"m{i:02d}" for i in range(64)]}
    assert obs["http"] == [] and obs["email"] == []
    assert obs["logs"] == [] and obs["audit"] == []
    assert all(g == 0 for g in ifc_runs[0].guesses.values())


def test_ifc_on_the_injected_code_ran_and_was_contained(ifc_runs: Any) -> None:
    # Without this, identical observations could also mean the attack never ran.
    for run in ifc_runs:
        ones = [i for i in range(64) if run.secret >> i & 1]
        above = run.above
        assert above["written"] == [f"w{i:02d}" for i in ones]
        assert above["deleted"] == [f"m{i:02d}" for i in ones]
        assert sorted(above["refused"]) == sorted(["drop", "email"] * len(ones))
        assert above["ended"] == {"timeout": len(ones), "kill": len(ones)}
        # every round logs its bit, at `secret`
        assert above["logged_ones"] >= 4 * len(ones)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two observations part, for a readable failure."""
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}/{k}")
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} != {len(b)}"
    return f"{path}: {a!r} != {b!r}"
