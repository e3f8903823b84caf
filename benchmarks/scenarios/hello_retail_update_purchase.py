"""Hello Retail "Update & Purchase" (HELLO-RETAIL.md §6, run-scenario-update-purchase.sh, P).

Photo phase, per round: Peter and Paul update their phones (in parallel), Owen creates two
products, Peter and Paul upload a photo (in parallel). Then Owen releases the first four
products, one after the other, and 12 batches of 4 purchases follow (each batch in parallel,
one per released id; Bob and Alice per the script's batch order, storing their cards).
Every sleep of the script is replaced by waiting for the work it was waiting for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scenarios import _hello_retail as hr
from benchmarks.scenarios._common import Session

NAME = "Hello Retail: Update & Purchase"
APP = "hello_retail"
FULL = {"photo_rounds": 4, "batches": 12}
QUICK = {"photo_rounds": 2, "batches": 2}
BATCH_USERS = ["bob", "alice", "bob", "bob", "alice", "bob",
               "bob", "alice", "bob", "bob", "alice", "bob"]
CARDS = {"bob": "1234123412341234", "alice": "1234123412341235"}
FIRST_ID = 1234567890


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    session = hr.start(ifc, workdir)
    session.state["size"] = QUICK if quick else FULL
    return session


def run(session: Session) -> list[Any]:
    size = session.state["size"]
    shop = hr.Retail(session)
    for r in range(size["photo_rounds"]):
        shop.update_phones()
        shop.create(str(FIRST_ID + 2 * r))
        shop.create(str(FIRST_ID + 2 * r + 1))
        shop.uploads(session.state["image_url"])
    ids = [str(FIRST_ID + k) for k in range(min(4, 2 * size["photo_rounds"]))]
    for pid in ids:
        shop.release(pid)
    request = 0
    for b in range(size["batches"]):
        who = BATCH_USERS[b % len(BATCH_USERS)]
        batch = []
        for pid in ids:
            request += 1
            batch.append(("/purchase", {"id": pid, "creditCard": CARDS[who], "storeCC": True,
                                        "requestId": f"{request:07d}"}, who))
        shop.batch(batch)
        shop.settle()
    return shop.transcript
