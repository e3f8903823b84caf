"""External output channels, run in the monitor: HTTP egress (httpx) and email (SMTP) (TCB).

The monitor has already decided that the output may leave (current ⊑ bound, or a declassifier
applied). These classes only make sure the request stays inside what the manifest declared —
the URL prefixes of an HTTP channel, well-formed addresses for email — and bound what comes
back (timeouts, response size).

An HTTP channel keeps no state between requests that a response could set: its client stores
no cookies (a cookie set in reply to a request at one label would otherwise be sent with a
later request at a lower one), and a guest may not set the headers that choose the virtual
host or frame the message (Host, Content-Length, Transfer-Encoding, hop-by-hop headers).
"""

from __future__ import annotations

import http.cookiejar
import re
import smtplib
import time
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import httpx

from trapeze.errors import ChannelError, FlowError, InvalidArgument, LimitExceeded
from trapeze.policy.specs import ChannelSpec

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Headers the client sets from the URL and the body, and hop-by-hop headers: from a guest, Host
# would send the request to another virtual host than the manifest's URL prefix names, and the
# framing ones could smuggle a second request past the front end. Proxy-* are refused too.
_REFUSED_HEADERS = frozenset({"host", "transfer-encoding", "content-length", "connection",
                              "keep-alive", "te", "upgrade", "trailer"})
# Response headers about the connection rather than the resource, never passed to a guest.
_CONNECTION_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What str.splitlines() breaks on (Python's email package refuses all of them in a header),
# and NUL.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\0"


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Accept no cookie from a response and return none with a request."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def _guest_headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidArgument("headers must map strings to strings")
    for k, v in headers.items():
        name = k.lower()
        if name in _REFUSED_HEADERS or name.startswith("proxy-"):
            raise InvalidArgument(
                f"header {k!r} may not be set by a function: the channel sets Host and the "
                "framing and hop-by-hop headers itself, from the URL and the body"
            )
        if not _TOKEN.fullmatch(k):
            raise InvalidArgument(f"header name {k!r} is not a valid HTTP header name")
        if not all(c == "\t" or " " <= c <= "~" for c in v):
            raise InvalidArgument(
                f"header {k!r} must have a value of printable ASCII on one line"
            )
    return dict(headers)


class HttpEgress:
    """HTTP requests to the URL prefixes one manifest channel names."""

    kind = "http"

    def __init__(self, spec: ChannelSpec) -> None:
        self.name = spec.name
        self.bound = spec.bound
        self.timeout = spec.timeout
        self.max_response_bytes = spec.max_response_bytes
        # The manifest's spec decides which URLs are inside the channel (one implementation,
        # shared with `trapeze check`).
        self.allows_url = spec.allows_url
        # One pooled client for all invocations; redirects are not followed, since a redirect
        # could lead outside the declared prefixes. Its cookie jar refuses every cookie: the
        # client is shared by requests at every label, so a cookie kept from one response would
        # carry what a high-label request sent into later lower-label ones. A guest that needs
        # a cookie sends its own Cookie header with each request.
        # Nor does it keep connections alive: a connection kept from a high-label request
        # and reused by a lower one carried what the high one did on it, through anything
        # the server says of the connection (Keep-Alive's remaining requests count), and
        # through whether it was still there at all (a high request that overran
        # max_response_bytes closed it, and the low one's source port changed). Review,
        # session 7: tests/attacks/test_review_limits_counters.py. One connection per
        # request costs a TCP handshake; per-label pools would need an eviction that high
        # activity could steer.
        self._client = httpx.Client(
            follow_redirects=False, timeout=spec.timeout, trust_env=False,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            # (max_connections as httpx's default, which setting limits would drop: sends left
            # behind at a deadline, monitor._send_by_deadline, stay bounded.)
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=100),
        )

    def send(self, request: Mapping[str, Any], *, within: float | None = None) -> dict[str, Any]:
        """The request's response; `within`: the seconds the whole exchange may take (the
        invocation's remaining time), where the channel's timeout bounds each socket
        operation: a server sending a byte per timeout kept a send left behind at the
        invocation's deadline, and its connection, for as long as it liked (review)."""
        method = str(request.get("method") or "GET").upper()
        url = request.get("url")
        if method not in _METHODS:
            raise InvalidArgument(f"HTTP method {method!r} is not supported")
        if not isinstance(url, str) or not self.allows_url(url):
            raise FlowError(f"channel {self.name!r} does not allow {url!r}")
        try:
            httpx.URL(url)
        except httpx.InvalidURL as e:
            raise InvalidArgument(f"invalid URL {url!r}: {e}") from None
        headers = _guest_headers(request.get("headers") or {})
        body = request.get("body")
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise InvalidArgument("body must be bytes, a string or None")
        timeout = request.get("timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            timeout = self.timeout
        timeout = min(float(timeout), self.timeout)
        end = None
        if within is not None:
            timeout = max(0.001, min(timeout, within))
            end = time.monotonic() + within
        try:
            with self._client.stream(
                method, url, headers=headers, content=body, timeout=timeout
            ) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    if end is not None and time.monotonic() > end:
                        raise ChannelError(
                            f"HTTP request on channel {self.name!r} timed out") from None
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise LimitExceeded(
                            f"response from channel {self.name!r} exceeds "
                            f"{self.max_response_bytes} bytes"
                        )
                    chunks.append(chunk)
                return {
                    "status": response.status_code,
                    # Not the connection's own headers (hop-by-hop, RFC 9110 §7.6.1).
                    "headers": {k: v for k, v in response.headers.items()
                                if k.lower() not in _CONNECTION_HEADERS},
                    "body": b"".join(chunks),
                }
        except httpx.TimeoutException:
            raise ChannelError(f"HTTP request on channel {self.name!r} timed out") from None
        except httpx.InvalidURL as e:
            raise InvalidArgument(f"invalid URL {url!r}: {e}") from None
        except httpx.HTTPError as e:
            raise ChannelError(
                f"HTTP request on channel {self.name!r} failed: {type(e).__name__}"
            ) from None

    def close(self) -> None:
        self._client.close()


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in _LINE_BREAKS):
        raise InvalidArgument(f"{what} must be one email address on one line")
    return value


class SmtpEmail:
    """Email over SMTP to one configured server."""

    kind = "smtp"

    def __init__(self, spec: ChannelSpec) -> None:
        self.name = spec.name
        self.bound = spec.bound
        self.host = spec.host or "127.0.0.1"
        self.port = spec.port or 25
        self.sender = spec.sender or "trapeze@localhost"
        self.timeout = spec.timeout

    def send(self, message: Mapping[str, Any], *, within: float | None = None) -> dict[str, Any]:
        """`within`: the invocation's remaining time, which bounds each socket operation
        as the channel's timeout does (an SMTP exchange is a handful of them)."""
        to = message.get("to")
        recipients = [to] if isinstance(to, str) else to
        if not isinstance(recipients, list) or not recipients or len(recipients) > 100:
            raise InvalidArgument("'to' must be an address or a list of 1-100 addresses")
        recipients = [_address(r, "each recipient") for r in recipients]
        subject = message.get("subject", "")
        text = message.get("text", "")
        html = message.get("html")
        if not isinstance(subject, str) or any(c in subject for c in _LINE_BREAKS):
            raise InvalidArgument(
                "'subject' must be a string on one line (no line or paragraph separators)"
            )
        if not isinstance(text, str) or (html is not None and not isinstance(html, str)):
            raise InvalidArgument("'text' and 'html' must be strings")
        email = EmailMessage()
        try:
            email["From"] = self.sender
            email["To"] = ", ".join(recipients)
            email["Subject"] = subject
            email.set_content(text)
            if html is not None:
                email.add_alternative(html, subtype="html")
            email.as_bytes()  # what cannot be encoded (a lone surrogate) fails here, not in SMTP
        except ValueError as e:
            # Whatever else the email package refuses is still the guest's input.
            raise InvalidArgument(f"the message cannot be sent as email: {e}") from None
        try:
            timeout = self.timeout if within is None else max(0.001, min(self.timeout, within))
            with smtplib.SMTP(self.host, self.port, timeout=timeout) as smtp:
                refused = smtp.send_message(email, from_addr=self.sender, to_addrs=recipients)
        except (OSError, smtplib.SMTPException) as e:
            raise ChannelError(
                f"email on channel {self.name!r} failed: {type(e).__name__}"
            ) from None
        return {"sent": len(recipients) - len(refused), "refused": sorted(refused)}

    def close(self) -> None:
        pass
