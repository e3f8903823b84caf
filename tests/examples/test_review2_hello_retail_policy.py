"""Review (second round) of Hello Retail's declassifiers: a trusted read at a declassifier's
max_label also returns facets that code at any label below it wrote under the same key.

* card_replies decided "has a stored card" from CARDS[<buyer>] read at cc-company: code at
  client-cc:alice (started by an anonymous caller) wrote or deleted CARDS["bob"] after one bit
  of Alice's card, and Bob's purchase said approved or "no card".
* assignment_email read the registration and the product at owner and did not require the
  email to be sent at owner: code at client:alice planted both rows with Alice's data and
  sent a public email carrying it.

The declassifiers now read facets at exact labels (info["facets"]): a client's card at
client-cc:<client>, registrations at owner, catalog rows at owner (or their released copy
at bottom), and an assignment email only from an invocation at owner.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from trapeze import App

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello_retail"

CARD_ATTACK = '''
    if operation == "spawn":  # an anonymous caller, at bottom
        from trapeze.guest import functions
        return functions.invoke_async("card_company", {"op": "plant", "bit": event["bit"]},
                                      label="client-cc:alice")
    if operation == "plant":  # at client-cc:alice: reads ALICE's card
        bit = (int(kv.get(CARDS, "alice")) >> event["bit"]) & 1
        if bit:
            kv.put(CARDS, "bob", "planted")
        else:
            kv.delete(CARDS, "bob")
        return None
'''

EMAIL_ATTACK = '''
    if event.get("evil_spawn"):  # an anonymous caller, at bottom
        from trapeze.guest import functions
        return functions.invoke_async("message", {"evil": 1}, label="client:alice")
    if event.get("evil"):  # at client:alice: Alice's own data
        secret = kv.get("usersTable", "alice")["name"]
        kv.put("photoRegistrationTable", "evil", {
            "assignment": "p-evil", "phone": "15550001234", "name": "SECRET=" + secret,
            "updatedBy": "a/b/c/" + secret.replace(" ", "_")})
        kv.put(CATALOG, "p-evil", {"name": "again " + secret})
        channels.send("email", {"assignment": {"product": "p-evil", "registration": "evil"}})
        return {}
'''


def _compromised(root: Path, function: str, anchor: str, attack: str) -> Path:
    app = root / "hello_retail"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns(".trapeze", "__pycache__"))
    path = app / "functions" / f"{function}.py"
    source = path.read_text()
    assert anchor in source, f"{function}.py changed: update the attack's anchor"
    path.write_text(source.replace(anchor, anchor + attack, 1))
    return app


def test_a_planted_card_under_another_clients_key_decides_nothing(tmp_path: Path) -> None:
    app_dir = _compromised(tmp_path, "card_company",
                           '    operation = event.get("op")\n', CARD_ATTACK)
    seen = []
    with App.load(app_dir).start(store=f"sqlite:///{tmp_path / 'app.db'}") as rt:
        stored = rt.invoke("card_company", {"op": "store", "creditCard": "5"},
                           as_principal="alice")
        assert stored.status == "ok", stored
        for bit in range(3):  # Alice's card is 5: bits 1, 0, 1
            assert rt.invoke("card_company", {"op": "spawn", "bit": bit}).status == "ok"
            assert rt.wait_idle()
            r = rt.invoke("authorize", {"user": "bob", "id": "p"}, as_principal="bob")
            assert r.status == "ok", r
            seen.append(r.value)
    assert all(v == seen[0] for v in seen), f"Bob's replies follow Alice's card: {seen}"


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content.decode())
        return "250 OK"


def test_rows_planted_below_owner_never_make_an_assignment_email(tmp_path: Path) -> None:
    app_dir = _compromised(tmp_path, "message", "def handler(event: dict[str, Any], "
                           "context: Any) -> dict[str, Any]:\n", EMAIL_ATTACK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        m = App.load(app_dir).manifest
        channels = dict(m.channels)
        channels["email"] = dataclasses.replace(channels["email"], port=port)
        app = App(dataclasses.replace(m, channels=channels))
        with app.start(store=f"sqlite:///{tmp_path / 'app.db'}") as rt:
            rt.view("client:alice").put("usersTable", "alice", {"name": "Alice Secretname"})
            assert rt.invoke("message", {"evil_spawn": 1}).status == "ok"
            assert rt.wait_idle()
            refused = [e for e in rt.audit_visible_to("top") if e["kind"] == "refused"]
    finally:
        smtp.stop()
    assert not any("Secretname" in msg for msg in inbox.messages), inbox.messages
    assert refused, "the declassifier was never asked"
