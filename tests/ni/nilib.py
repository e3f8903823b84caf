"""Value semantics shared by compiled guest programs and the reference interpreter.

The compiler pastes this file's text into every generated handler module (the sandbox child
can import only the stdlib and trapeze.guest), and the interpreter imports it, so both sides
compute registers with one definition. Keep it stdlib-only and free of trapeze imports.
"""

import re
import zlib

MOD = 1000

# Exception classes a guest call can raise, mapped to small register codes. Only the class
# matters: the interpreter must be able to predict the code without knowing message texts.
ERROR_CODES = {
    "FlowError": 101,
    "InvocationError": 102,
    "ChannelError": 103,
    "InvalidArgument": 104,
    "NotFound": 105,
    "LimitExceeded": 106,
    "AlreadyExists": 107,
}

_HEX_ID = re.compile(r"[0-9a-f]{12,}")
_APP_PATH = re.compile(r"\S*/app[AB]\b")


def num(x):
    """Fold any JSON-like value into 0..MOD-1, deterministically (no hash randomisation)."""
    if x is None:
        return 0
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x % MOD
    if isinstance(x, float):
        return int(x) % MOD
    if isinstance(x, str):
        return zlib.crc32(x.encode()) % MOD
    if isinstance(x, bytes):
        return zlib.crc32(x) % MOD
    if isinstance(x, list | tuple):
        acc = len(x)
        for i, v in enumerate(x):
            acc = (acc * 31 + num(v) + i) % MOD
        return acc
    if isinstance(x, dict):
        return num(sorted([str(k), v] for k, v in x.items()))
    return MOD - 1


def errcode(exc):
    return ERROR_CODES.get(type(exc).__name__, 199)


def sanitize(text):
    """First line of an error text without request ids and app paths (which differ per world
    and per run without being secret)."""
    first = str(text).split("\n", 1)[0]
    return _APP_PATH.sub("<app>", _HEX_ID.sub("<id>", first))


def errtext(exc):
    """A register code that depends on the error's *text*: how error-text leaks get caught."""
    return 200 + num(type(exc).__name__ + ": " + sanitize(exc)) % 700
