"""image_features end to end through the HTTP gateway: uploads, numpy extraction, who sees what.

Two uploaders (ann, bob) upload realistic 1024x768 images; each extracts and reads its own
features; neither can extract, read, list or detect the other's image, and an anonymous
caller sees nothing — also when the function code is compromised (the last test swaps the
reading function for one that dumps everything it can see).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from trapeze import App

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "image_features"
W, H = 1024, 768


def ppm(pixels: np.ndarray) -> bytes:
    """Binary PPM (P6) or PGM (P5) of a uint8 array."""
    magic = b"P6" if pixels.ndim == 3 else b"P5"
    h, w = pixels.shape[:2]
    return magic + f"\n{w} {h}\n255\n".encode() + pixels.astype(np.uint8).tobytes()


def photo(seed: int) -> np.ndarray:
    """A 1024x768 RGB test image: smooth gradients, a few hard-edged shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([x / W * 200, y / H * 180, (x + y) / (W + H) * 120], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, W), rng.integers(0, H), rng.integers(20, 150)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _start(app_dir: Path, tmp: Path) -> Any:
    return App.load(app_dir).start(store=f"sqlite:///{tmp / 'app.db'}", http=True)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _start(APP_DIR, tmp_path_factory.mktemp("image_features")) as rt:
        yield rt


@pytest.fixture(scope="module")
def tokens(running: Any) -> dict[str, str]:
    return {who: running.add_principal(who, label=f"uploader:{who}") for who in ("ann", "bob")}


@pytest.fixture
def client(running: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(running: Any, tokens: dict[str, str]) -> dict[str, str]:
    """ann uploads a raw PPM body, bob a base64 JSON upload; both extract."""
    with httpx.Client(base_url=running.url, timeout=120) as c:
        ann = c.post("/images", content=ppm(photo(1)), headers={
            **bearer(tokens["ann"]), "content-type": "image/x-portable-pixmap"})
        assert ann.status_code == 201, ann.text
        bob = c.post("/images", json={"image": base64.b64encode(ppm(photo(2))).decode()},
                     headers=bearer(tokens["bob"]))
        assert bob.status_code == 201, bob.text
        ids = {"ann": ann.json()["id"], "bob": bob.json()["id"]}
        for who, image_id in ids.items():
            r = c.post(f"/images/{image_id}/extract", headers=bearer(tokens[who]))
            assert r.status_code == 200, r.text
    return ids


def test_upload_describes_the_image(uploaded: dict[str, str], client: httpx.Client,
                                    tokens: dict[str, str]) -> None:
    listed = client.get("/images", headers=bearer(tokens["ann"])).json()["images"]
    assert listed == [{"id": uploaded["ann"], "width": W, "height": H, "channels": 3,
                       "maxval": 255, "bytes": len(ppm(photo(1)))}]


def test_features_are_real_and_match_a_local_computation(uploaded: dict[str, str],
                                                         client: httpx.Client,
                                                         tokens: dict[str, str]) -> None:
    r = client.get(f"/images/{uploaded['ann']}/features", headers=bearer(tokens["ann"]))
    assert r.status_code == 200, r.text
    f = r.json()["features"]
    img = photo(1).astype(np.float64) / 255
    for k, name in enumerate("rgb"):
        assert f["mean"][name] == pytest.approx(img[:, :, k].mean(), abs=1e-4)
        assert f["std"][name] == pytest.approx(img[:, :, k].std(), abs=1e-4)
        assert sum(f["histogram"][name]) == pytest.approx(1.0, abs=1e-4)
        assert len(f["histogram"][name]) == 16
    assert 0.0 < f["edge_density"] < 0.5  # shapes have edges, the gradients do not
    assert sum(f["orientation_histogram"]) == pytest.approx(1.0, abs=1e-4)
    assert f["sharpness"] > 0 and f["colorfulness"] > 0 and 0 < f["entropy_bits"] <= 8
    assert len(f["ahash"]) == 16
    bob = client.get(f"/images/{uploaded['bob']}/features", headers=bearer(tokens["bob"]))
    assert bob.json()["features"]["ahash"] != f["ahash"]  # different pictures


def test_uploaders_never_see_each_others_images(uploaded: dict[str, str],
                                                client: httpx.Client,
                                                tokens: dict[str, str]) -> None:
    for who, other in (("ann", "bob"), ("bob", "ann")):
        h = bearer(tokens[who])
        theirs = uploaded[other]
        # Not readable, not extractable, not listed — indistinguishable from a missing id.
        r = client.get(f"/images/{theirs}/features", headers=h)
        assert r.status_code == 404 and r.json() == {"error": f"no image: {theirs}"}
        r = client.post(f"/images/{theirs}/extract", headers=h)
        assert r.status_code == 404 and r.json() == {"error": f"no image {theirs}"}
        ids = [i["id"] for i in client.get("/images", headers=h).json()["images"]]
        assert ids == [uploaded[who]]


def test_anonymous_sees_nothing(uploaded: dict[str, str], client: httpx.Client) -> None:
    assert client.get("/images").json() == {"images": []}
    for image_id in uploaded.values():
        assert client.get(f"/images/{image_id}/features").status_code == 404
        assert client.post(f"/images/{image_id}/extract").status_code == 404
    r = client.post("/images", content=ppm(photo(3)))
    assert r.status_code == 401  # uploading needs an identity


def test_an_auditor_sees_both_and_the_store_is_faceted(uploaded: dict[str, str],
                                                       running: Any) -> None:
    assert running.view("auditor").get("features", uploaded["ann"]) is not None
    assert running.view("auditor").get("features", uploaded["bob"]) is not None
    assert running.view("uploader:ann").get("images", uploaded["bob"]) is None
    assert running.view("public").scan("images") == []
    assert [lbl for _, lbl in running.view("auditor").facets("images", uploaded["ann"])] \
        == ["uploader:ann"]


def test_a_grey_pgm_and_bad_input(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["ann"])
    grey = photo(4)[:, :, 1]
    r = client.post("/images", content=ppm(grey), headers=h)
    assert r.status_code == 201 and r.json()["channels"] == 1
    f = client.post(f"/images/{r.json()['id']}/extract", headers=h).json()["features"]
    assert set(f["mean"]) == {"gray"} and "colorfulness" not in f
    for bad in (b"GIF89a", b"P6\n10 10\n255\n" + b"\0" * 10, b"P6\n0 10\n255\n"):
        r = client.post("/images", content=bad, headers=h)
        assert r.status_code == 400, r.text


def test_compromised_reader_still_sees_only_the_callers_label(
    uploaded: dict[str, str], tmp_path: Path, tokens: dict[str, str], running: Any
) -> None:
    # Inject code into `features`: it returns everything it can find, images included,
    # and tries to copy it to a public key. It runs against the same store.
    app_dir = tmp_path / "app"
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns(".trapeze", "__pycache__"))
    with (app_dir / "functions" / "features.py").open("a") as f:
        f.write(
            "\n\ndef handler(event, context):  # injected\n"
            "    found = {t: [k for k, _ in kv.scan(t, limit=1000)]\n"
            "             for t in ('images', 'meta', 'features')}\n"
            "    kv.put('stolen', 'all', found)\n"
            "    return {'statusCode': 200, 'body': json.dumps(found)}\n"
        )
    store = running.store_url[len("sqlite:///"):]
    running_view_before = running.view("public").scan("stolen")
    with App.load(app_dir).start(store=f"sqlite:///{store}", http=True) as evil:
        token = evil.add_principal("bob", label="uploader:bob")
        with httpx.Client(base_url=evil.url, timeout=60) as c:
            seen = c.get("/images", headers=bearer(token)).json()
            anon = c.get("/images").json()
    assert seen["images"] == [uploaded["bob"]] and uploaded["ann"] not in str(seen)
    assert anon == {"images": [], "meta": [], "features": []}
    assert running_view_before == []
    # The copy landed at each caller's own label, nowhere lower.
    assert running.view("public").get("stolen", "all") == anon
    assert uploaded["bob"] not in str(running.view("uploader:ann").get("stolen", "all"))
