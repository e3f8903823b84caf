"""Ordinary handler code that must keep working under confinement."""

import json
import os

from trapeze.guest import FlowError, TrapezeError, kv, label

HERE = os.path.dirname(os.path.abspath(__file__))


def imports(event, context):
    # Modules nobody pre-imported: read from the interpreter tree after confinement.
    import decimal
    import fractions
    import xml.etree.ElementTree as ET

    root = ET.fromstring("<a><b>1</b></a>")
    return [str(decimal.Decimal("1.1") + decimal.Decimal("2.2")),
            str(fractions.Fraction(1, 3)), root.find("b").text]


def threads(event, context):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return sorted(pool.map(lambda x: x * x, range(8)))


def numeric(event, context):
    import numpy as np

    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    return {"sum": float(a.sum()), "dot": (a @ a.T).tolist()[0], "rand": float(np.random.rand())}


def stdlib(event, context):
    import datetime
    import hashlib
    import random

    return {
        "json": json.loads(json.dumps({"a": [1, 2]})),
        "date": datetime.date(2024, 2, 29).isoformat(),
        "now_ok": datetime.datetime.now(datetime.UTC).year >= 2024,
        "random": 0 <= random.random() < 1,
        "draw": random.getrandbits(64),
        "sha": hashlib.sha256(b"abc").hexdigest()[:8],
    }


def data_file(event, context):
    with open(os.path.join(HERE, "data", "config.json")) as fh:
        return json.load(fh)["greeting"]


def run_exe(event, context):
    import subprocess

    out = {"true": subprocess.run([event["exe"]]).returncode}
    try:
        subprocess.run(["/bin/sh", "-c", "true"])
        out["sh"] = "ran"
    except PermissionError as exc:
        out["sh"] = exc.errno
    return out


def guest_api(event, context):
    kv.put("t", "k", {"v": 1})
    got = kv.get("t", "k")
    try:
        label.raise_to("bottom")
        flow = None
    except FlowError as exc:
        flow = str(exc)
    try:
        kv.scan("t")
        internal = None
    except TrapezeError as exc:
        internal = (type(exc).__name__, str(exc))
    return {"got": got, "flow": flow, "internal": internal, "label": context.label,
            "fn": context.function_name, "arn": context.invoked_function_arn,
            "remaining": context.get_remaining_time_in_millis() > 0,
            "env": dict(os.environ)}


def echo(event, context):
    print("printed", len(event) if isinstance(event, bytes | str) else event)
    return event


def raises(event, context):
    raise ValueError("bad input 42")


def bad_result(event, context):
    return {1, 2, 3}


def chatty(event, context):
    for _ in range(event["lines"]):
        print("x" * 99)
    return "done"


def whoami(event, context):
    return {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd()}


def handler(event, context):
    return globals()[event["do"]](event, context)
