"""Hello Retail "Build & Browse" with the same work in both modes.

The paper's variant P gives each photographer's registration 3 assignments. Under Trapeze a
photographer's re-registration cannot see the owner's count and restarts it (the one place
the policy withholds, examples/hello_retail/README.md), so photographers never run out
there, while in the baseline they run out after three rounds: the Trapeze run of
`hello_retail_build_browse` does ~40 % more invocations (every later photo round: message,
receive, record, success, report and their stream records). This variant gives registrations
more assignments than the scenario uses (processor's environment, in both modes alike), so
both modes run every photo round and the ratio compares equal work. The steps are those of
`hello_retail_build_browse`.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.scenarios import _hello_retail as hr
from benchmarks.scenarios._common import Session
from benchmarks.scenarios.hello_retail_build_browse import FULL, QUICK, run

NAME = "Hello Retail: Build & Browse, same work"
APP = "hello_retail"
ASSIGNMENTS = 1000  # more than the scenario's 30 iterations can use
__all__ = ["APP", "NAME", "run", "setup"]


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    session = hr.start(ifc, workdir, assignments=ASSIGNMENTS)
    session.state["size"] = QUICK if quick else FULL
    return session
