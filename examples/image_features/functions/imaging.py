"""Decoding and feature extraction, numpy only (no Pillow needed).

Images travel as binary PNM: P5 (grey) or P6 (RGB), maxval up to 65535 — the simplest
lossless formats there are, which any image tool writes (`convert x.jpg x.ppm`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

MAX_SIDE = 8192
WHITESPACE = b" \t\r\n\v\f"


class BadImage(ValueError):
    pass


def body_bytes(event: dict[str, Any]) -> bytes:
    """The uploaded bytes: a raw body, or JSON {"image": base64}."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    headers = event.get("headers") or {}
    if headers.get("content-type", "").split(";")[0].strip() == "application/json":
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("image"), str):
            raise BadImage('a JSON upload is {"image": "<base64>"}')
        try:
            return base64.b64decode(data["image"], validate=True)
        except ValueError as e:
            raise BadImage(f"invalid base64: {e}") from None
    # The gateway hands over a body that is valid UTF-8 as text: encoding it gives the
    # original bytes back.
    return body.encode("utf-8")


def _header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """(magic, width, height, maxval, offset of the pixels)."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos] in WHITESPACE:
            pos += 1
        if pos < len(data) and data[pos] == ord("#"):  # a comment runs to the end of line
            while pos < len(data) and data[pos] not in b"\r\n":
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos] not in WHITESPACE and data[pos] != ord("#"):
            pos += 1
        if start == pos:
            raise BadImage("truncated PNM header")
        fields.append(data[start:pos])
    if pos >= len(data) or data[pos] not in WHITESPACE:
        raise BadImage("no whitespace after the PNM header")
    magic = fields[0]
    if magic not in (b"P5", b"P6"):
        raise BadImage("not a binary PGM (P5) or PPM (P6) image")
    try:
        width, height, maxval = (int(f) for f in fields[1:])
    except ValueError:
        raise BadImage("non-numeric PNM header field") from None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadImage(f"image sides must be 1..{MAX_SIDE}")
    if not 0 < maxval <= 65535:
        raise BadImage("maxval must be 1..65535")
    return magic, width, height, maxval, pos + 1


def decode(data: bytes) -> np.ndarray:
    """An (height, width, channels) float32 array scaled to 0..1."""
    magic, width, height, maxval, offset = _header(data)
    channels = 3 if magic == b"P6" else 1
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    count = width * height * channels
    if len(data) - offset < count * dtype.itemsize:
        raise BadImage(f"expected {count * dtype.itemsize} bytes of pixels, "
                       f"got {len(data) - offset}")
    pixels = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return (pixels.reshape(height, width, channels).astype(np.float32) / maxval)


def describe(data: bytes) -> dict[str, int]:
    """The header facts, checked, without decoding the pixels."""
    magic, width, height, maxval, offset = _header(data)
    channels = 3 if magic == b"P6" else 1
    needed = width * height * channels * (2 if maxval > 255 else 1)
    if len(data) - offset < needed:
        raise BadImage(f"expected {needed} bytes of pixels, got {len(data) - offset}")
    return {"width": width, "height": height, "channels": channels, "maxval": maxval}


def encode_ppm(image: np.ndarray) -> bytes:
    """uint8 (h, w, 3) or (h, w) array → binary PPM/PGM (for clients and tests)."""
    if image.dtype != np.uint8:
        raise ValueError("encode_ppm takes uint8 pixels")
    magic = b"P6" if image.ndim == 3 else b"P5"
    h, w = image.shape[:2]
    return magic + f"\n{w} {h}\n255\n".encode() + image.tobytes()


def _luma(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 1:
        return img[:, :, 0]
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def _sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel derivatives on the interior, by array slicing (no SciPy needed)."""
    g = gray
    gx = ((g[:-2, 2:] + 2 * g[1:-1, 2:] + g[2:, 2:])
          - (g[:-2, :-2] + 2 * g[1:-1, :-2] + g[2:, :-2]))
    gy = ((g[2:, :-2] + 2 * g[2:, 1:-1] + g[2:, 2:])
          - (g[:-2, :-2] + 2 * g[:-2, 1:-1] + g[:-2, 2:]))
    return gx / 8.0, gy / 8.0


def features(img: np.ndarray, *, bins: int = 16) -> dict[str, Any]:
    """Global features of an image in 0..1: all JSON numbers, rounded for stable output."""
    h, w, c = img.shape
    names = ["r", "g", "b"] if c == 3 else ["gray"]
    flat = img.reshape(-1, c)
    out: dict[str, Any] = {"width": w, "height": h, "channels": c}
    # Accumulate in float64: float32 sums over a strided megapixel drift in the 4th digit.
    out["mean"] = dict(zip(names, _r(flat.mean(axis=0, dtype=np.float64)), strict=True))
    out["std"] = dict(zip(names, _r(flat.std(axis=0, dtype=np.float64)), strict=True))
    out["histogram"] = {
        name: _r(np.histogram(flat[:, k], bins=bins, range=(0.0, 1.0))[0] / flat.shape[0])
        for k, name in enumerate(names)
    }

    gray = _luma(img)
    counts = np.histogram(gray, bins=256, range=(0.0, 1.0))[0] / gray.size
    nonzero = counts[counts > 0]
    out["entropy_bits"] = _r1(-(nonzero * np.log2(nonzero)).sum())

    gx, gy = _sobel(gray)
    magnitude = np.hypot(gx, gy)
    # An edge: a step of more than 1/8 of the full range across the 3x3 neighbourhood.
    out["edge_density"] = _r1((magnitude > 0.125).mean())
    out["gradient_mean"] = _r1(magnitude.mean())
    # Where edges point: 8 orientation bins weighted by edge strength (a global HOG).
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    orient = np.histogram(angle, bins=8, range=(0.0, np.pi), weights=magnitude)[0]
    out["orientation_histogram"] = _r(orient / max(float(orient.sum()), 1e-12))
    # Sharpness: variance of the Laplacian (blurred images score low).
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    out["sharpness"] = _r1(lap.var())
    if c == 3:
        # Hasler & Süsstrunk's colourfulness, on the 0..255 scale it was defined for.
        r, g, b = (img[:, :, k] * 255 for k in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        out["colorfulness"] = _r1(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(),
                                                                                yb.mean()))
    # Average hash: 8x8 block means against their median, as 16 hex digits.
    blocks = gray[: h - h % 8, : w - w % 8] if h >= 8 and w >= 8 else np.resize(gray, (8, 8))
    bh, bw = blocks.shape[0] // 8, blocks.shape[1] // 8
    means = blocks.reshape(8, bh, 8, bw).mean(axis=(1, 3))
    bits = (means > np.median(means)).ravel()
    out["ahash"] = f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"
    return out


def _r(values: Any) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).ravel()]


def _r1(value: Any) -> float:
    return round(float(value), 6)
