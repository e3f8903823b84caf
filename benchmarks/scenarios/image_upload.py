"""image_features "Upload": one POST /images of a 1024x768 PPM, one invocation; several
repetitions per round, one after the other, each waited for to quiescence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scenarios import _images
from benchmarks.scenarios._common import Session, settle

NAME = "Image features: Upload"
APP = "image_features"
REPETITIONS = {True: 2, False: 8}   # quick → 2


def setup(ifc: bool, quick: bool, workdir: Path) -> Session:
    return _images.start(ifc, workdir, REPETITIONS[quick])


def run(session: Session) -> list[Any]:
    transcript: list[Any] = []
    for image in session.state["images"]:
        status, _ = _images.upload(session, image)
        settle(session.rt)
        # The id is random per upload: the transcript keeps what must match across modes.
        transcript.append(status)
    return transcript
