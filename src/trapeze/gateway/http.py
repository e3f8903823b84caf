"""The HTTP gateway: an ASGI app (Starlette) serving the manifest's routes (TCB).

A request is authenticated, given its label, turned into an API-Gateway-proxy style event
(so existing Lambda handlers run unchanged) with credentials stripped, and invoked at that
label; the reply is bounded by the same label (DESIGN §4, §6).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trapeze.gateway.auth import Authenticator, AuthError, Caller, strip_credentials
from trapeze.runtime.invoker import InvocationResult

ADMIN_PREFIX = "/_trapeze"
# How long a client may take to send a request body, in seconds (then 408). Read when the app
# is built.
BODY_READ_TIMEOUT = 10.0
# Headers that frame the HTTP message: the gateway sets them, a function may not.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade",
                              "keep-alive", "trailer", "te"})


@dataclass(frozen=True)
class GatewayRoute:
    path: str
    methods: Sequence[str]
    function: str
    anonymous: bool = False
    max_body_bytes: int = 1024 * 1024


class Backend(Protocol):
    """What the gateway needs from the runtime."""

    authenticator: Authenticator

    def invoke(self, function: str, event: Any, *, label: str, principal: str | None,
               request_id: str) -> InvocationResult: ...

    def logs_visible_to(self, label: str, function: str | None, *,
                        after: int | None = None) -> list[dict[str, Any]]: ...

    def audit_visible_to(self, label: str, *, after: int | None = None
                         ) -> list[dict[str, Any]]: ...


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class _BodyTooLarge(Exception):
    pass


def connection_limit(concurrency: int, queue: int) -> int:
    """The server's `limit_concurrency`: connections (and requests) it serves at once before
    it answers 503 itself. Room for every admitted request, as many kept-alive idle
    connections again, and some for health checks and refusals."""
    return 2 * (concurrency + queue) + 128


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValueError("invalid Content-Length")
        if int(declared) > limit:
            raise _BodyTooLarge


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _proxy_event(request: Request, route: GatewayRoute, body: bytes, caller: Caller,
                 request_id: str) -> dict[str, Any]:
    try:
        text: str | None = body.decode("utf-8") if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    query = request.query_params
    return {
        "resource": route.path,
        "path": request.url.path,
        "httpMethod": request.method,
        "headers": strip_credentials(dict(request.headers)),
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": {k: query.getlist(k) for k in query} or None,
        "pathParameters": dict(request.path_params) or None,
        "body": text,
        "isBase64Encoded": encoded,
        "requestContext": {
            "requestId": request_id,
            "principal": caller.principal,
            "label": caller.label,
        },
    }


def _http_response(result: InvocationResult) -> Response:
    headers = {"x-trapeze-request-id": result.request_id, "x-trapeze-status": result.status}
    if result.status == "ok":
        value = result.value
        # The value is the guest's: it may hold what JSON cannot carry (bytes in a list, NaN)
        # or header text HTTP cannot (non-latin-1). Starlette raises while building the
        # response; answer a clear 502 instead of an unhandled 500.
        try:
            if isinstance(value, Mapping) and isinstance(value.get("statusCode"), int):
                return _proxy_response(value, dict(headers))
            if isinstance(value, bytes):
                return Response(value, media_type="application/octet-stream", headers=headers)
            return JSONResponse(value, headers=headers)
        except (TypeError, ValueError):
            return JSONResponse({"status": "error", "error": "the function returned a value "
                                 "that cannot be sent as an HTTP response"},
                                status_code=502, headers=headers)
    status = {"withheld": 202, "timeout": 504, "error": 500}.get(result.status, 503)
    if result.status == "refused" and result.error and result.error.startswith("no function"):
        status = 404
    return JSONResponse({"status": result.status, "error": result.error}, status_code=status,
                        headers=headers)


def _proxy_response(value: Mapping[str, Any], headers: dict[str, str]) -> Response:
    code = value["statusCode"]
    if not 100 <= code <= 599:
        code = 502
    extra = value.get("headers") or {}
    if isinstance(extra, Mapping):
        for k, v in extra.items():
            if (isinstance(k, str) and isinstance(v, str | int | float)
                    and k.lower() not in _FRAMING_HEADERS
                    and not any(c in f"{k}{v}" for c in "\r\n\0")):
                headers.setdefault(k.lower(), str(v))
    body = value.get("body", b"")
    if value.get("isBase64Encoded") and isinstance(body, str):
        try:
            body = base64.b64decode(body, validate=True)
        except ValueError:
            return _error(502, "the function returned invalid base64 in its body")
    elif isinstance(body, str):
        body = body.encode()
    elif body is None:
        body = b""
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    return Response(body, status_code=code, headers=headers)


def build_app(backend: Backend, routes: Sequence[GatewayRoute], *, concurrency: int = 64,
              queue: int = 256, new_request_id: Callable[[], str],
              body_timeout: float | None = None) -> Starlette:
    # `concurrency` threads run invocations; up to `queue` more requests wait for one as
    # coroutines (cheap), and anything beyond is answered 503 at once, so memory stays bounded
    # however many requests arrive. A request is admitted before its body is read: only
    # admitted requests buffer a body (each at most its route's max_body_bytes), and a body
    # must arrive within `body_timeout` seconds (408), so slow senders cannot pin memory.
    limiter = anyio.CapacityLimiter(concurrency)
    admitted = 0
    read_timeout = BODY_READ_TIMEOUT if body_timeout is None else body_timeout

    def endpoint(route: GatewayRoute) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            try:
                caller = backend.authenticator.authenticate(request.headers,
                                                            anonymous_ok=route.anonymous)
            except AuthError as e:
                return _error(e.status, e.reason)
            too_large = f"request body exceeds {route.max_body_bytes} bytes"
            try:
                _check_declared_length(request, route.max_body_bytes)
            except _BodyTooLarge:
                return _error(413, too_large)
            except ValueError as e:
                return _error(400, str(e))
            nonlocal admitted
            if admitted >= concurrency + queue:
                return _error(503, "busy: too many requests in flight, retry later")
            admitted += 1
            try:
                try:
                    with anyio.fail_after(read_timeout):
                        body = await _read_body(request, route.max_body_bytes)
                except TimeoutError:
                    return _error(408, f"the request body did not arrive within "
                                       f"{read_timeout:g} seconds")
                except ClientDisconnect:  # gone: nobody reads this reply
                    return _error(400, "the client disconnected before sending its body")
                except _BodyTooLarge:
                    return _error(413, too_large)
                ctype = request.headers.get("content-type", "")
                if body and ctype.split(";")[0].strip().lower() == "application/json":
                    try:
                        json.loads(body)
                    except ValueError as e:
                        return _error(400, f"malformed JSON body: {e}")
                    except RecursionError:
                        return _error(400, "malformed JSON body: nested too deeply")
                request_id = new_request_id()
                event = _proxy_event(request, route, body, caller, request_id)
                result = await anyio.to_thread.run_sync(
                    lambda: backend.invoke(route.function, event, label=caller.label,
                                           principal=caller.principal, request_id=request_id),
                    limiter=limiter,
                )
            finally:
                admitted -= 1
            return _http_response(result)

        return handle

    async def admin(request: Request) -> Response:
        try:
            caller = backend.authenticator.authenticate(request.headers, anonymous_ok=False)
        except AuthError as e:
            return _error(e.status, e.reason)
        what = request.path_params["what"]
        if what not in ("logs", "audit"):
            return _error(404, f"no admin resource {what!r}")
        # Rows carry a cursor (their number among the rows this caller sees), never the
        # store-wide seq, which would count rows above the caller's label (monitor/audit.py).
        # ?after=CURSOR pages forward from a row of an earlier reply.
        raw_after = request.query_params.get("after")
        after: int | None = None
        if raw_after is not None:
            if not (raw_after.isascii() and raw_after.isdigit() and len(raw_after) <= 20):
                return _error(400, "after must be a cursor (an int >= 0) from an earlier reply")
            after = int(raw_after)
        function = request.query_params.get("function")
        if what == "logs":
            rows = await anyio.to_thread.run_sync(
                lambda: backend.logs_visible_to(caller.label, function, after=after))
        else:
            rows = await anyio.to_thread.run_sync(
                lambda: backend.audit_visible_to(caller.label, after=after))
        return JSONResponse(rows)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    table = [
        Route(r.path, endpoint(r), methods=list(r.methods), name=f"{r.function}:{r.path}")
        for r in routes
    ]
    table.append(Route(f"{ADMIN_PREFIX}/health", health, methods=["GET"]))
    table.append(Route(ADMIN_PREFIX + "/{what}", admin, methods=["GET"]))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route for {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"method {request.method} is not allowed on {request.url.path}")

    return Starlette(routes=table, exception_handlers={404: not_found, 405: not_allowed})
