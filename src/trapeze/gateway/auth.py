"""Who is calling, and at which label the request runs (DESIGN §4) (TCB).

* `Authorization: Bearer <token>`: an API token (stored only as its SHA-256) or, when the app
  configures a key, a JWT whose claim names a registered principal.
* The request runs at the principal's clearance, or at a lower label it asks for with the
  `X-Trapeze-Label` header — never higher.
* No credentials: `bottom`, where the route allows anonymous callers.
* Bad, unknown or expired credentials: 401 with the reason. Never a silent downgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import jwt

from trapeze.labels import Lattice

LABEL_HEADER = "x-trapeze-label"
# Headers that carry credentials or label requests: they never reach the function.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", LABEL_HEADER})
TOKEN_PREFIXES = ("tz_", "tpz_")  # API tokens; anything else with two dots is a JWT


@dataclass(frozen=True)
class Caller:
    principal: str | None
    clearance: str
    label: str


class AuthError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class JwtSettings:
    key: str  # HMAC secret or PEM public key
    algorithms: Sequence[str] = ("HS256",)
    claim: str = "sub"  # the claim holding the principal id
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 0.0
    required: Sequence[str] = field(default=("exp",))


TokenResolver = Callable[[str], tuple[str, str | None, str | None]]
"""`resolve(token) -> (status, principal, clearance)`; status "ok", "expired" or "unknown"."""


class Authenticator:
    def __init__(
        self,
        lattice: Lattice,
        resolve_token: TokenResolver,
        *,
        jwt_settings: JwtSettings | None = None,
        clearance_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.lattice = lattice
        self._resolve = resolve_token
        self._jwt = jwt_settings
        # For JWTs: the claim names a principal whose clearance the registry holds.
        self._clearance_of = clearance_of

    def authenticate(self, headers: Mapping[str, str], *, anonymous_ok: bool) -> Caller:
        auth = headers.get("authorization")
        requested = headers.get(LABEL_HEADER)
        if auth is None:
            if not anonymous_ok:
                raise AuthError(401, "this route needs credentials: send 'Authorization: Bearer "
                                     "<token>'")
            bottom = self.lattice.bottom
            if requested is not None and requested != bottom:
                raise AuthError(403, f"anonymous requests run at {bottom!r}; cannot ask for "
                                     f"{requested!r}")
            return Caller(None, bottom, bottom)
        scheme, _, credential = auth.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(401, "malformed Authorization header: expected 'Bearer <token>'")
        principal, clearance = self._principal(credential)
        if clearance is None:
            raise AuthError(401, f"principal {principal!r} is not registered")
        label = clearance
        if requested is not None:
            if not self.lattice.is_label(requested):
                raise AuthError(400, f"unknown label {requested!r} in {LABEL_HEADER}")
            if not self.lattice.flows(requested, clearance):
                raise AuthError(403, f"label {requested!r} is not below the clearance of "
                                     f"{principal!r}")
            label = requested
        return Caller(principal, clearance, label)

    def _principal(self, credential: str) -> tuple[str, str | None]:
        if credential.count(".") == 2 and not credential.startswith(TOKEN_PREFIXES):
            principal = self._principal_from_jwt(credential)
            clearance = self._clearance_of(principal) if self._clearance_of else None
            return principal, clearance
        status, principal, clearance = self._resolve(credential)
        if status == "expired":
            raise AuthError(401, "the API token has expired")
        if status != "ok" or principal is None:
            raise AuthError(401, "invalid or revoked API token")
        return principal, clearance

    def _principal_from_jwt(self, credential: str) -> str:
        if self._jwt is None:
            raise AuthError(401, "JWTs are not accepted: this app configures no JWT key")
        s = self._jwt
        try:
            claims = jwt.decode(
                credential, s.key, algorithms=list(s.algorithms), audience=s.audience,
                issuer=s.issuer, leeway=s.leeway_s, options={"require": list(s.required)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the JWT has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "the JWT's signature does not verify with the configured key"
                            ) from None
        except jwt.PyJWTError as e:
            raise AuthError(401, f"invalid JWT: {e}") from None
        principal = claims.get(s.claim)
        if not isinstance(principal, str) or not principal:
            raise AuthError(401, f"the JWT has no string claim {s.claim!r} naming a principal")
        return principal


def strip_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
