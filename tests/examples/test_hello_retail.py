"""Hello Retail end to end: the real gateway over HTTP, a real SMTP sink, a real image server.

Who sees what (HELLO-RETAIL.md §5.4, issue 6): a stored card only at cc-company (and its
client-cc label), never at the owner, the other client or the client's own label; one
photographer never sees another's registration; anonymous callers see only the released,
public catalog. And the flows work: a photo is assigned, emailed, received and reported; a
purchase publishes only when approved.

The first group drives single functions (the gateway, or `rt.invoke` standing in for a stream
delivery). The second goes through the stream and workflow engines the runtime starts.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hr_support import PNG, ImageServer, Mailbox, wait_for

from trapeze import App

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "hello_retail"

INGRESS = "com.nordstrom/retail-stream-ingress/1-0-0"
CREATE = "com.nordstrom/product/create/1-0-0"
UPDATE_PHONE = "com.nordstrom/user-info/update-phone/1-0-0"
LOGIN = "com.nordstrom/user-info/login/1-0-0"

TOKENS = {p: f"dev-{p}" for p in ("owen", "peter", "paul", "alice", "bob", "ccco")}
ALICE_CARD, BOB_CARD = "1234123412341235", "1234123412341234"


# ---------------------------------------------------------------------- external services
@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox().start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ImageServer(only="/photo.png")
    try:
        yield server.url
    finally:
        server.stop()


# ---------------------------------------------------------------------- the app
def _app_for_test(smtp_port: int, image_prefix: str) -> App:
    """The manifest as written, pointed at this test's SMTP sink and image server.

    The runtime has no switch to override channel settings, so the validated manifest is
    copied with the two channels re-targeted and a 1 s assignment retry instead of 15 s.
    """
    m = App.load(APP_DIR).manifest
    channels = dict(m.channels)
    channels["email"] = dataclasses.replace(channels["email"], port=smtp_port)
    channels["images"] = dataclasses.replace(channels["images"], url_prefixes=(image_prefix,))
    functions = dict(m.functions)
    functions["processor"] = dataclasses.replace(
        functions["processor"], env={"ASSIGNMENT_RETRY_SECONDS": "1"}
    )
    return App(dataclasses.replace(m, channels=channels, functions=functions))


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox, image_server: str) -> Any:
    app = _app_for_test(mailbox.port, image_server)
    tmp = tmp_path_factory.mktemp("hello_retail")
    with app.start(store=f"sqlite:///{tmp}/app.db", http=True) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def client(rt: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rt.url, timeout=30.0) as c:
        yield c


def auth(principal: str, label: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
    if label is not None:
        headers["X-Trapeze-Label"] = label
    return headers


def envelope(data: dict[str, Any], origin: str) -> dict[str, Any]:
    return {"schema": INGRESS, "origin": origin, "timeOrigin": "2024-05-01T10:00:00.000Z",
            "data": data}


def stream_delivery(*envelopes: dict[str, Any]) -> dict[str, Any]:
    """What the stream engine hands a consumer: a Kinesis-like batch."""
    return {"Records": [
        {"data": e, "partitionKey": e["data"]["id"], "sequenceNumber": f"{i:012d}",
         "approximateArrivalTimestamp": time.time()}
        for i, e in enumerate(envelopes, 1)
    ]}


def product(pid: str, category: str = "Things", price: str | None = "10") -> dict[str, Any]:
    data = {"schema": CREATE, "id": pid, "brand": "ACME", "name": "A sort of thing",
            "description": "Something you need", "category": category}
    if price is not None:
        data["price"] = price
    return data


# ====================================================================== needs the invoker only
def test_event_writer_validates_and_needs_credentials(client: httpx.Client) -> None:
    good = {**product("9000000001"), "origin": "hello-retail/testid/mark"}
    assert client.post("/events", json=good).status_code == 401  # no anonymous writes
    bad_bodies = [
        {k: v for k, v in good.items() if k != "origin"},          # no origin
        {**good, "schema": "com.nordstrom/unknown/1-0-0"},          # unregistered schema
        {**good, "colour": "red"},                                  # extra field
        {**good, "price": 10},                                      # not a string
        {k: v for k, v in good.items() if k != "brand"},           # missing field
        {**good, "user": "owen", "pass": "owenspassword"},          # credentials in the body
        {"schema": "com.nordstrom/product/image/1-0-0", "id": "1", "image": "x",
         "origin": "a/b"},                                          # only report emits images
    ]
    for body in bad_bodies:
        r = client.post("/events", json=body, headers=auth("owen"))
        assert r.status_code == 400, (body, r.text)
        assert r.text.startswith("Retail Stream Event Writer Invalid Request")


def test_unreleased_products_are_the_owners(rt: Any, client: httpx.Client) -> None:
    # Deliver a product/create as the stream would, at the owner's label.
    r = rt.invoke("catalog_builder",
                  stream_delivery(envelope(product("9000000002"), "hello-retail/testid/mark")),
                  as_principal="owen")
    assert r.status == "ok", r.error
    owner = auth("owen")
    assert "Things" in client.get("/categories", headers=owner).json()
    listed = client.get("/products", params={"category": "Things"}, headers=owner).json()
    assert {"id": "9000000002", "category": "Things", "brand": "ACME",
            "name": "A sort of thing", "description": "Something you need"} in listed
    assert client.get("/products/9000000002", headers=owner).json()["price"] == "10"
    for headers in ({}, auth("alice"), auth("peter")):  # anonymous, a client, a photographer
        assert "Things" not in client.get("/categories", headers=headers).json()
        assert client.get("/products", params={"category": "Things"},
                          headers=headers).json() == []
        assert client.get("/products/9000000002", headers=headers).status_code == 404
    assert rt.view("public").get("productPriceTable", "9000000002") is None


def test_products_query_must_be_exactly_category(client: httpx.Client) -> None:
    assert client.get("/products").status_code == 400
    assert client.get("/products", params={"category": "Things", "x": "1"}).status_code == 400


def test_photographer_registrations_are_hidden_from_each_other(rt: Any) -> None:
    for who, uid, phone in (("peter", "7654321", "5551239999"), ("paul", "7654322", "5551238888")):
        rec = envelope({"schema": UPDATE_PHONE, "id": uid, "phone": phone},
                       f"hello-retail/testid/{who}")
        r = rt.invoke("processor", stream_delivery(rec), as_principal=who)
        assert r.status == "ok", r.error
    peter, paul = rt.view("photographer:peter"), rt.view("photographer:paul")
    reg = peter.get("photoRegistrationTable", "7654321")
    assert reg["name"] == "peter" and reg["phone"] == "15551239999"
    assert reg["registrations"] == 3 and reg["assignments"] == 0
    assert peter.get("photoRegistrationTable", "7654322") is None
    assert paul.get("photoRegistrationTable", "7654321") is None
    assert paul.get("photoRegistrationTable", "7654322")["name"] == "paul"
    for viewer in ("client:alice", "public", "cc-company"):
        for uid in ("7654321", "7654322"):
            assert rt.view(viewer).get("photoRegistrationTable", uid) is None
    owner = rt.view("owner")
    assert owner.get("photoRegistrationTable", "7654321") is not None
    assert owner.get("photoRegistrationTable", "7654322") is not None


def test_receive_reply_reaches_the_photographer_through_the_declassifier(
    client: httpx.Client,
) -> None:
    # receive raises to owner at entry; its fixed reply still reaches the photographer.
    r = client.post("/photos", headers=auth("peter"), json={
        "MediaUrl0": "http://127.0.0.1:9/none.png", "MediaContentType0": "image/png",
        "From": "19999999999"})
    assert r.status_code == 200, r.text
    assert r.text == "ServerError"  # no assignment for that phone
    assert client.post("/photos", json={}).status_code == 401


def test_card_company_keeps_cards_at_client_cc(rt: Any) -> None:
    r = rt.invoke("card_company", {"op": "store", "creditCard": "5555000011112222"},
                  as_principal="bob")
    assert r.status == "ok" and r.value == {"stored": True}, r
    assert rt.view("cc-company").get("creditCardsTable", "bob") == "5555000011112222"
    assert rt.view("client-cc:bob").get("creditCardsTable", "bob") == "5555000011112222"
    for viewer in ("owner", "client:bob", "client:alice", "client-cc:alice", "public"):
        assert rt.view(viewer).get("creditCardsTable", "bob") is None, viewer
    # The decision comes back to the client's label, with a freshly minted code.
    r = rt.invoke("card_company", {"op": "authorize"}, as_principal="bob")
    assert r.status == "ok", r
    assert set(r.value) in ({"approved", "authorization"}, {"approved", "failureReason"})
    # Alice has no stored card, and cannot use Bob's.
    r = rt.invoke("card_company", {"op": "authorize"}, as_principal="alice")
    assert r.value == {"approved": "false",
                       "failureReason": "No credit card supplied and no credit card stored in DB"}


def test_tasks_reach_higher_labels_only_through_declassifiers(rt: Any) -> None:
    r = rt.invoke("catalog_builder",
                  stream_delivery(envelope(product("9000000003"), "hello-retail/testid/mark")),
                  as_principal="owen")
    assert r.status == "ok", r.error
    # The release read: below owner, read_product's reply gets through only for a releaser.
    r = rt.invoke("read_product", {"id": "9000000003"}, as_principal="owen", as_label="bottom")
    assert r.status == "ok", r.error
    assert r.value["item"]["name"] == "A sort of thing" and r.value["price"] == "10"
    # Nobody else: not another principal, not an invocation on behalf of nobody (a workflow
    # task or stream delivery), whatever the label asked for.
    for who, at in (("alice", "bottom"), ("alice", "public"), ("peter", "public"),
                    (None, "bottom"), (None, "public")):
        r = rt.invoke("read_product", {"id": "9000000003"}, as_principal=who, as_label=at)
        assert r.status == "error" and r.value is None, (who, at, r)
        assert "refused" in (r.error or ""), (who, at, r)
    # The purchase task: the decision comes back at the client's label, the card does not.
    r = rt.invoke("authorize", {"user": "alice", "id": "9000000003", "creditCard": ALICE_CARD},
                  as_principal="alice")
    assert r.status == "ok" and r.label == "client:alice", r
    assert ALICE_CARD not in str(r.value)


# ====================================================================== streams/workflows
@pytest.fixture(scope="module")
def engines(client: httpx.Client) -> None:
    r = client.post("/events", headers=auth("alice"), json={
        "schema": LOGIN, "id": "alice", "name": "Alice", "origin": "hello-retail/web/alice"})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def photographed(rt: Any, client: httpx.Client, mailbox: Mailbox, image_server: str,
                 engines: None) -> dict[str, Any]:
    """Two photographers register, the owner creates a product, the assignee sends a photo."""
    for who, uid, phone in (("peter", "654321", "5551231234"), ("paul", "654322", "5551231235")):
        r = client.post("/events", headers=auth(who), json={
            "schema": UPDATE_PHONE, "id": uid, "phone": phone,
            "origin": f"hello-retail/testid/{who}"})
        assert r.status_code == 200, r.text
    wait_for(lambda: all(rt.view("owner").get("photoRegistrationTable", u)
                         for u in ("654321", "654322")), what="registrations")
    r = client.post("/events", headers=auth("owen"),
                    json={**product("1234567890"), "origin": "hello-retail/testid/mark"})
    assert r.status_code == 200, r.text

    addresses = {"15551231234@photogs.com": "peter", "15551231235@photogs.com": "paul"}
    mail = wait_for(lambda: [m for a in addresses for m in mailbox.to(a)],
                    what="the assignment email")[0]
    assert "New Photography Assignment From The Store" in mail["text"]
    assert "Please snap a pic of: A sort of thing" in mail["text"]
    assignee = addresses[mail["to"][0]]
    phone = mail["to"][0].split("@")[0]

    r = client.post("/photos", headers=auth(assignee), json={
        "MediaUrl0": image_server + "photo.png", "MediaContentType0": "image/png",
        "From": int(phone)})
    assert r.status_code == 200, r.text
    assert r.text == f"Thanks so much {assignee}!"
    item = wait_for(lambda: (rt.view("owner").get("productCatalogTable", "1234567890") or {})
                    .get("image"), what="the image on the catalog entry")
    return {"assignee": assignee, "phone": phone, "image": item}


def test_photo_flow_completes(rt: Any, photographed: dict[str, Any]) -> None:
    owner = rt.view("owner")
    assert photographed["image"] == "storedImagesTable/1234567890"
    stored = owner.get("storedImagesTable", "1234567890")
    assert base64.b64decode(stored["Body"]) == PNG and stored["BodyEncoding"] == "base64"
    assert stored["ContentType"] == "image/png"
    assert stored["Metadata"] == {"from": photographed["phone"]}
    uid = "654321" if photographed["assignee"] == "peter" else "654322"
    wait_for(lambda: owner.get("photoAssignmentsTable", photographed["phone"]) is None,
             what="the assignment to be closed")
    reg = owner.get("photoRegistrationTable", uid)
    assert reg["assignments"] == 1 and "assignment" not in reg
    # Photographers and clients never see the images, assignments or task tokens.
    for viewer in ("photographer:peter", "photographer:paul", "client:alice", "public"):
        assert rt.view(viewer).get("storedImagesTable", "1234567890") is None
        assert rt.view(viewer).get("photoAssignmentsTable", photographed["phone"]) is None


def test_only_released_products_are_public(rt: Any, client: httpx.Client,
                                           photographed: dict[str, Any]) -> None:
    assert client.get("/products/1234567890").status_code == 404
    # Only at bottom (where anonymous callers run, so everybody can read the copy; see
    # README), and only the owner: the declassifier checks the principal.
    r = client.post("/release", headers=auth("owen", label="public"), json={"id": "1234567890"})
    assert r.status_code == 400 and "X-Trapeze-Label: bottom" in r.text, r.text
    for who in ("alice", "peter"):
        r = client.post("/release", headers=auth(who, label="bottom"), json={"id": "1234567890"})
        assert r.status_code == 403 and r.text == "Product release refused", (who, r.text)
    r = client.post("/release", headers=auth("owen", label="bottom"), json={"id": "404"})
    assert r.status_code == 404, r.text
    r = client.post("/release", headers=auth("owen", label="bottom"), json={"id": "1234567890"})
    assert r.status_code == 200, r.text
    assert r.json() == "Product release started. The storefront will be updated shortly."
    # The release publishes the catalog entry, the price and the image as separate stream
    # events: wait for all three.
    got = wait_for(lambda: (lambda r: r.status_code == 200 and {"price", "image"} <= r.json().keys()
                            and r.json())(client.get("/products/1234567890")),
                   what="the released product with its price and image")
    assert got["price"] == "10" and got["image"] == "storedImagesTable/1234567890"
    assert client.get("/categories").json() == ["Things"]
    assert [p["id"] for p in client.get("/products", params={"category": "Things"}).json()] \
        == ["1234567890"]
    # The other (unreleased) product stays the owner's.
    assert client.get("/products/9000000002").status_code == 404
    assert client.get("/products/1234567890", headers=auth("alice")).json() == got
    r = client.post("/release", headers=auth("owen", label="bottom"), json={"id": "1234567890"})
    assert r.json() == "Product release had previously been initiated."


def _purchase(client: httpx.Client, who: str, pid: str, rid: str,
              card: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"id": pid, "requestId": rid, "storeCC": card is not None}
    if card is not None:
        body["creditCard"] = card
    return client.post("/purchase", headers=auth(who), json=body)


def _published(rt: Any, label: str) -> list[dict[str, Any]]:
    """Purchase records on the retail stream visible at `label`."""
    rows = rt.engines.streams.tail("retail", label, limit=1000)
    return [r["data"] for r in rows if isinstance(r["data"], dict) and "productId" in r["data"]]


def test_purchases(rt: Any, client: httpx.Client, photographed: dict[str, Any]) -> None:
    wait_for(lambda: client.get("/products/1234567890").status_code == 200,
             what="the released product")
    r = client.post("/events", headers=auth("bob"), json={
        "schema": LOGIN, "id": "bob", "name": "Bob", "origin": "hello-retail/web/bob"})
    assert r.status_code == 200
    wait_for(lambda: rt.view("client:bob").get("usersTable", "bob"), what="bob's login")
    wait_for(lambda: rt.view("client:alice").get("usersTable", "alice"), what="alice's login")

    assert _purchase(client, "alice", "1234567890", "0000001", ALICE_CARD).json() \
        == "Purchase submitted. Thank you!"
    assert _purchase(client, "alice", "1234567890", "0000001", ALICE_CARD).json() \
        == "Purchase was submitted previously. You will not be charged twice."
    assert _purchase(client, "bob", "1234567890", "0000002", BOB_CARD).status_code == 200
    # Not approvable: an unreleased product (no price at Bob's label).
    assert _purchase(client, "bob", "9000000002", "0000003", BOB_CARD).status_code == 200
    # Only a client buys, at their own label (a deliberate difference, README): a photographer
    # is refused at once (before, the purchase started and failed authentication), and so is
    # the owner asking at a client's label.
    r = _purchase(client, "paul", "1234567890", "0000004", "1111222233334444")
    assert r.status_code == 403 and "client:paul" in r.text, r.text
    r = client.post("/purchase", headers=auth("owen", label="client:bob"),
                    json={"id": "1234567890", "requestId": "0000006"})
    assert r.status_code == 403, r.text

    cc = rt.view("cc-company")
    wait_for(lambda: cc.get("creditCardsTable", "alice") == ALICE_CARD, what="alice's card")
    wait_for(lambda: cc.get("creditCardsTable", "bob") == BOB_CARD, what="bob's card")
    assert rt.view("client-cc:alice").get("creditCardsTable", "alice") == ALICE_CARD
    for viewer in ("owner", "client:alice", "client:bob", "client-cc:bob"):
        assert rt.view(viewer).get("creditCardsTable", "alice") is None, viewer
    assert rt.view("client:alice").get("creditCardsTable", "bob") is None
    assert rt.view("photographer:paul").get("creditCardsTable", "paul") is None

    # A second purchase with the stored card (no card in the request).
    assert _purchase(client, "alice", "1234567890", "0000005").status_code == 200

    wait_for(lambda: len(_published(rt, "client:alice")) >= 2, what="alice's two purchases")
    wait_for(lambda: _published(rt, "client:bob"), what="bob's purchase")
    time.sleep(2)  # let the unapprovable purchases finish, too
    alice, bob = _published(rt, "client:alice"), _published(rt, "client:bob")
    assert {p["userId"] for p in alice} == {"alice"}
    assert {p["userId"] for p in bob} == {"bob"}  # nothing of Alice's at Bob's label
    assert all(p["productId"] == "1234567890" and p["productPrice"] == "10" for p in alice + bob)
    assert all(isinstance(p["authorization"], int) for p in alice + bob)
    assert len(bob) <= 1  # the unreleased product's purchase never publishes
    assert _published(rt, "photographer:paul") == []  # no login: not authenticated
    assert not any(ALICE_CARD in str(p) or BOB_CARD in str(p) for p in alice + bob)
