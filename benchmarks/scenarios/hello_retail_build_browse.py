"""Hello Retail "Build & Browse" (HELLO-RETAIL.md §6, run-scenario-catalog-build-read.sh, P).

Build phase, per iteration i: Peter and Paul update their phones (in parallel), Owen creates
products "1234567890"+i and "1234567891"+i (string concatenation, as in the script), Peter
and Paul upload (in parallel), Owen releases both. Read phase: Alice lists the categories
and then the products of "Things", 60 times. The whole scenario is timed.

After three iterations both photographers have used their three assignments (the app's
rule, as in the paper's port), so later products wait for a photographer for good and later
uploads get the app's "no assignment" reply — in both modes alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scenarios import _hello_retail as hr
from benchmarks.scenarios._common import Session

NAME = "Hello Retail: Build & Browse"
APP = "hello_retail"
FULL = {"iterations": 30, "reads": 60}
QUICK = {"iterations": 3, "reads": 6}


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    session = hr.start(ifc, workdir)
    session.state["size"] = QUICK if quick else FULL
    return session


def run(session: Session) -> list[Any]:
    size = session.state["size"]
    shop = hr.Retail(session)
    for i in range(size["iterations"]):
        ids = (f"1234567890{i}", f"1234567891{i}")
        shop.update_phones()
        for pid in ids:
            shop.create(pid)
        shop.uploads(session.state["image_url"])
        for pid in ids:
            shop.release(pid)
    for _ in range(size["reads"]):
        shop.get("/categories", "alice")
        shop.get("/products", "alice", params={"category": "Things"})
    return shop.transcript
