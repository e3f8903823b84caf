"""The `trapeze` command: check, run, invoke, principal, logs, audit, bench."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trapeze.errors import ConfigError, TrapezeError


def _store_url(args: argparse.Namespace, app: Any) -> str:
    if getattr(args, "store", None):
        return str(args.store)
    if getattr(args, "data", None):
        return f"sqlite:///{Path(args.data).resolve() / 'app.db'}"
    return str(app.default_store_url())


def _open_system(args: argparse.Namespace) -> tuple[Any, Any]:
    """The app and its store (for commands that only read or manage the registry)."""
    from trapeze.runtime.app import App, _ensure_parent
    from trapeze.store import open_store

    app = App.load(args.app)
    url = _store_url(args, app)
    _ensure_parent(url)
    return app, open_store(url, app.manifest.lattice)


def _viewer_label(app: Any, store: Any, principal: str | None, label: str | None) -> str:
    lattice = app.manifest.lattice
    if principal is not None:
        p = store.system.get_principal(principal)
        if p is None:
            raise ConfigError(f"no principal named {principal!r}; see 'trapeze principal list'")
        return str(p.clearance)
    return lattice.check(label) if label else lattice.bottom


def cmd_check(args: argparse.Namespace) -> int:
    from trapeze.policy import check_app

    errors = check_app(args.app, warnings_to=sys.stdout)  # prints "warning: ..." lines itself
    for message in errors:
        print(message, file=sys.stderr)
    if errors:
        return 1
    print("ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from trapeze.runtime.app import App

    app = App.load(args.app)
    if args.unconfined_dev:
        logging.getLogger("trapeze").warning(
            "RUNNING FUNCTION CODE UNCONFINED (--unconfined-dev): no isolation, development only"
        )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    jwt_settings = None
    if args.jwt_key_file:
        from trapeze.gateway.auth import JwtSettings

        jwt_settings = JwtSettings(key=Path(args.jwt_key_file).read_text().strip(),
                                   algorithms=(args.jwt_algorithm,), claim=args.jwt_claim,
                                   audience=args.jwt_audience, issuer=args.jwt_issuer)
    rt = app.start(_store_url(args, app), http=True, host=args.host, port=args.port,
                   confine=not args.unconfined_dev, ifc=not args.no_ifc, jwt=jwt_settings,
                   executor=args.executor, ray_address=args.ray_address,
                   allow_dev_tokens=args.allow_dev_tokens)
    try:
        print(f"trapeze: serving {app.name} on {rt.url} (store {_shown_url(rt.store_url)})",
              flush=True)
        if rt.executor == "ray":
            print(f"  executor: ray, {len(rt._ray.nodes())} node(s)", flush=True)
        for route in app.manifest.routes:
            print(f"  {','.join(route.methods):12} {route.path} -> {route.function}", flush=True)
        stop.wait()
        print("trapeze: shutting down (finishing in-flight invocations)", flush=True)
    finally:
        rt.close()
    return 0


def _shown_url(url: str) -> str:
    """The store URL without its password (the banner goes to logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _read_event(args: argparse.Namespace) -> Any:
    if args.event_file:
        return json.loads(Path(args.event_file).read_text())
    if args.event is not None:
        return json.loads(args.event)
    return None


def cmd_invoke(args: argparse.Namespace) -> int:
    from trapeze.runtime.app import App

    app = App.load(args.app)
    event = _read_event(args)
    with app.start(_store_url(args, app), confine=not args.unconfined_dev,
                   executor=args.executor, ray_address=args.ray_address) as rt:
        result = rt.invoke(args.function, event, as_principal=args.as_principal,
                           as_label=args.label)
    print(json.dumps({"status": result.status, "value": _jsonable(result.value),
                      "error": result.error, "request_id": result.request_id}, indent=2))
    return 0 if result.status == "ok" else 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return value


def cmd_principal(args: argparse.Namespace) -> int:
    app, store = _open_system(args)
    system = store.system
    try:
        if args.action == "add":
            app.manifest.lattice.check(args.label)
            system.add_principal(args.id, args.label)
            token = system.create_token(args.id, expires=_expiry(args.expires))
            print(f"added {args.id} with clearance {args.label}")
            print(f"token (shown once, store it now): {token}")
        elif args.action == "token":
            token = system.create_token(args.id, expires=_expiry(args.expires))
            print(f"token (shown once, store it now): {token}")
        elif args.action == "remove":
            if not system.remove_principal(args.id):
                print(f"no principal named {args.id!r}", file=sys.stderr)
                return 1
            print(f"removed {args.id} and its tokens")
        else:
            for p in system.principals():
                print(f"{p.id}\t{p.clearance}")
    finally:
        store.close()
    return 0


def _expiry(seconds: float | None) -> float | None:
    return time.time() + seconds if seconds else None


def cmd_logs(args: argparse.Namespace) -> int:
    app, store = _open_system(args)
    try:
        viewer = _viewer_label(app, store, args.as_principal, args.label)
        lattice = app.manifest.lattice
        from trapeze.runtime.app import all_pages

        def page(since: int) -> list[Any]:
            return store.system.logs(visible=lambda lab: lattice.flows(lab, viewer),
                                     function=args.function, since_seq=since)

        # The store-wide seq only pages here; it is never printed: the gap between two
        # seqs would count the lines above the viewer's label (monitor/audit.py).
        for r in all_pages(page):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
            for line in r.text.rstrip("\n").splitlines() or [""]:
                print(f"{stamp} {r.function} {r.request_id[:8]} [{r.label}] {line}")
    finally:
        store.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    app, store = _open_system(args)
    try:
        viewer = _viewer_label(app, store, args.as_principal, args.label)
        lattice = app.manifest.lattice
        from trapeze.runtime.app import all_pages

        # As in cmd_logs: seq pages, and is never printed.
        for r in all_pages(lambda since: store.system.audit(since_seq=since)):
            if args.kind and r.kind != args.kind:
                continue
            if r.label is not None and not lattice.flows(r.label, viewer):
                continue
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
            print(f"{stamp} {r.kind:10} {r.function or '-'} {(r.request_id or '-')[:8]} "
                  f"[{r.label}] {json.dumps(r.detail, sort_keys=True)}")
    finally:
        store.close()
    return 0


def _caller_clearance(app: Any, store: Any, args: argparse.Namespace) -> str:
    """The clearance CLI stream/workflow commands act with: a principal's, or --label's."""
    if args.as_principal is None and args.label is None:
        raise ConfigError("say who you are: --as PRINCIPAL (or --label L for an operator view)")
    return _viewer_label(app, store, args.as_principal, args.label)


def cmd_stream(args: argparse.Namespace) -> int:
    from trapeze.runtime import workflows as engines

    app, store = _open_system(args)
    url = _store_url(args, app)
    try:
        clearance = _caller_clearance(app, store, args)
    finally:
        store.close()
    if args.action == "put":
        if args.record is None:
            raise ConfigError("trapeze stream put needs --record JSON")
        out: Any = engines.stream_put(url, app.manifest, args.stream, json.loads(args.record),
                                      args.partition_key, clearance=clearance)
    else:
        out = engines.stream_tail(url, app.manifest, args.stream, clearance=clearance,
                                  limit=args.limit)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_workflow(args: argparse.Namespace) -> int:
    from trapeze.runtime import workflows as engines

    app, store = _open_system(args)
    url = _store_url(args, app)
    try:
        clearance = _caller_clearance(app, store, args)
    finally:
        store.close()
    if args.action == "list":
        out: Any = engines.workflow_list(url, app.manifest, clearance=clearance,
                                         workflow=args.execution)
    else:
        if not args.execution:
            raise ConfigError("trapeze workflow describe needs an execution id or name")
        out = engines.workflow_describe(url, app.manifest, args.execution, clearance=clearance)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"
    if not script.exists():
        print("benchmarks/run_all.py not found: run from a source checkout", file=sys.stderr)
        return 1
    sys.argv = [str(script), *(["--quick"] if args.quick else [])]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trapeze", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_store(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--data", help="data folder (the store is DATA/app.db)")
        g.add_argument("--store", help="store URL, e.g. sqlite:///path/app.db")

    def with_executor(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where invocations run: this machine's sandboxes (local) or "
                             "every node of a Ray cluster (ray; needs --store postgresql://)")
        sp.add_argument("--ray-address", metavar="ADDR",
                        help="the Ray cluster to use with --executor ray: HEAD:PORT, or auto "
                             "(the cluster 'ray start' runs on this machine; the default)")

    sp = sub.add_parser("check", help="validate an app's manifest")
    sp.add_argument("app")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("run", help="serve an app over HTTP")
    sp.add_argument("app")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8080)
    sp.add_argument("--unconfined-dev", action="store_true",
                    help="DEVELOPMENT ONLY: run function code without confinement")
    sp.add_argument("--allow-dev-tokens", action="store_true",
                    help="accept the manifest's plaintext principal tokens although --host is "
                         "not a loopback address (development only)")
    sp.add_argument("--no-ifc", action="store_true",
                    help="the benchmark baseline: no labels, plain store, warm workers")
    sp.add_argument("--jwt-key-file", help="accept JWTs verified with this key (an HMAC "
                                           "secret or a PEM public key)")
    sp.add_argument("--jwt-algorithm", default="HS256")
    sp.add_argument("--jwt-claim", default="sub", help="the claim naming the principal")
    sp.add_argument("--jwt-audience")
    sp.add_argument("--jwt-issuer")
    with_store(sp)
    with_executor(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("invoke", help="invoke one function and print its result")
    sp.add_argument("app")
    sp.add_argument("function")
    sp.add_argument("--event", help="the event, as JSON")
    sp.add_argument("--event-file", help="a file holding the event as JSON")
    sp.add_argument("--as", dest="as_principal", help="run as this principal")
    sp.add_argument("--label", help="run at this label (default: bottom, or the principal's)")
    sp.add_argument("--unconfined-dev", action="store_true")
    with_store(sp)
    with_executor(sp)
    sp.set_defaults(func=cmd_invoke)

    sp = sub.add_parser("principal", help="manage principals and their API tokens")
    sp.add_argument("action", choices=["add", "list", "remove", "token"])
    sp.add_argument("app")
    sp.add_argument("id", nargs="?")
    sp.add_argument("--label", help="clearance (for add)")
    sp.add_argument("--expires", type=float, help="token lifetime in seconds")
    with_store(sp)
    sp.set_defaults(func=cmd_principal)

    for name, func, what in (("logs", cmd_logs, "invocation logs"),
                             ("audit", cmd_audit, "the audit log")):
        sp = sub.add_parser(name, help=f"show {what} visible to a principal")
        sp.add_argument("app")
        sp.add_argument("--as", dest="as_principal", help="show what this principal may see")
        sp.add_argument("--label", help="show what this label may see (default: bottom)")
        if name == "logs":
            sp.add_argument("--function")
        else:
            sp.add_argument("--kind", help="only entries of this kind (refused, raise, ...)")
        with_store(sp)
        sp.set_defaults(func=func)

    sp = sub.add_parser("stream", help="append to or read a stream, as a principal")
    sp.add_argument("action", choices=["put", "tail"])
    sp.add_argument("app")
    sp.add_argument("stream")
    sp.add_argument("--record", help="the record, as JSON (put)")
    sp.add_argument("--partition-key")
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--as", dest="as_principal")
    sp.add_argument("--label")
    with_store(sp)
    sp.set_defaults(func=cmd_stream)

    sp = sub.add_parser("workflow", help="list or describe workflow executions")
    sp.add_argument("action", choices=["list", "describe"])
    sp.add_argument("app")
    sp.add_argument("execution", nargs="?", help="execution id or name (describe); "
                                                 "workflow name (list, optional)")
    sp.add_argument("--as", dest="as_principal")
    sp.add_argument("--label")
    with_store(sp)
    sp.set_defaults(func=cmd_workflow)

    sp = sub.add_parser("bench", help="run the case-study benchmarks")
    sp.add_argument("--quick", action="store_true")
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "principal":
        if args.action in ("add", "remove", "token") and not args.id:
            print(f"trapeze principal {args.action} needs a principal id", file=sys.stderr)
            return 2
        if args.action == "add" and not args.label:
            print("trapeze principal add needs --label (the principal's clearance)",
                  file=sys.stderr)
            return 2
    try:
        return int(args.func(args))
    except TrapezeError as e:
        print(f"trapeze: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"trapeze: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
