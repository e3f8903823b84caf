"""image_features "Extract": one POST /images/{id}/extract (numpy features of a 1024x768
image), one invocation; the images are uploaded during setup, untimed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scenarios import _images
from benchmarks.scenarios._common import Session, settle, summary

NAME = "Image features: Extract"
APP = "image_features"
REPETITIONS = {True: 2, False: 8}


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    session = _images.start(ifc, workdir, REPETITIONS[quick])
    session.state["ids"] = [_images.upload(session, image)[1]
                            for image in session.state["images"]]
    settle(session.rt)
    return session


def run(session: Session) -> list[Any]:
    transcript: list[Any] = []
    for image_id in session.state["ids"]:
        status, body = summary(session.client.post(f"/images/{image_id}/extract"))
        settle(session.rt)
        features = dict(body["features"]) if isinstance(body, dict) else body
        if isinstance(features, dict):
            features.pop("cpu_ms", None)   # a measurement, not a result: differs run to run
        transcript.append((status, features))
    return transcript
