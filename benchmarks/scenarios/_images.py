"""image_features driving code shared by the Upload and Extract scenarios."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import numpy as np
from benchmarks.scenarios._common import EXAMPLES, Session, settle

from trapeze import App

APP_DIR = EXAMPLES / "image_features"
W, H = 1024, 768


def photo(seed: int) -> bytes:
    """A 1024x768 RGB PPM: smooth gradients, hard-edged shapes, sensor noise — the same kind
    of picture tests/examples/test_image_features.py uses, so extraction does real work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([x / W * 200, y / H * 180, (x + y) / (W + H) * 120], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, W), rng.integers(0, H), rng.integers(20, 150)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    return f"P6\n{W} {H}\n255\n".encode() + pixels.tobytes()


def start(ifc: bool, workdir: Path, repetitions: int) -> Session:
    db = Path(tempfile.mkdtemp(dir=workdir)) / "app.db"
    rt = App.load(APP_DIR).start(store=f"sqlite:///{db}", http=True, ifc=ifc)
    token = rt.add_principal("ann", label="uploader:ann")
    client = httpx.Client(base_url=rt.url, timeout=300.0,
                          headers={"Authorization": f"Bearer {token}"})
    session = Session(rt, client, repetitions=repetitions)
    session.state["images"] = [photo(seed) for seed in range(repetitions)]
    # One untimed upload and extraction first, in both modes: the baseline's warm worker and
    # Trapeze's zygote are both meant to be warm when the window starts.
    _, warm = upload(session, photo(1000))
    client.post(f"/images/{warm}/extract").raise_for_status()
    settle(rt)
    return session


def upload(session: Session, image: bytes) -> tuple[int, str]:
    r = session.client.post("/images", content=image,
                            headers={"content-type": "image/x-portable-pixmap"})
    r.raise_for_status()
    return r.status_code, r.json()["id"]
