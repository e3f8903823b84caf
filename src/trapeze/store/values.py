"""Validation and encoding of what the store accepts: table names, keys and values.

Everything here runs on the trusted side before any SQL is issued, so a rejected call writes
nothing. Error messages name only the caller's own argument (its type, its path inside the
value), never anything stored: they go back to the guest (DESIGN §5, errors.py).

Encoding, shared by the faceted and the plain store so that the benchmark compares like with
like: JSON values are stored as compact JSON text, bytes as a BLOB, a tombstone as SQL NULL.
The SQLite storage class alone therefore tells the three apart.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeAlias

from trapeze.errors import InvalidArgument

# A JSON value (as Python builds it) or bytes. Recursive aliases are not worth the mypy noise.
Value: TypeAlias = Any

# In bytes of UTF-8, not characters: a table name and a key must fit together in one
# PostgreSQL btree entry (at most 2704 bytes; index facets_key_seq), so that a name one
# backend accepts is accepted by the other (review, session 7: 1024 four-byte characters were
# stored by SQLite and an internal error on PostgreSQL).
MAX_NAME_BYTES = 1024
# Deep nesting would hit Python's recursion limit in json and in our own walk; no real
# document needs this much, and a cap turns a crash into a clear error.
MAX_DEPTH = 200

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_encode = _encoder.encode
_decode = json.JSONDecoder().decode


def _has_surrogate(text: str) -> bool:
    # A lone surrogate cannot be encoded as UTF-8, which is what SQLite stores; reject it up
    # front instead of failing half-way through a statement.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_name(what: str, name: object, *, allow_empty: bool) -> str:
    """Validate a table name (``what="table"``) or a key (``what="key"``)."""
    if type(name) is not str:
        raise InvalidArgument(f"{what} must be a str, got {type(name).__name__}")
    if not name and not allow_empty:
        raise InvalidArgument(f"{what} must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate cannot be encoded as UTF-8, which is what both backends store;
        # rejected up front instead of failing half-way through a statement.
        raise InvalidArgument(
            f"{what} contains a lone surrogate (not valid Unicode text)"
        ) from None
    if size > MAX_NAME_BYTES:
        raise InvalidArgument(
            f"{what} is too long: {size} bytes of UTF-8, at most {MAX_NAME_BYTES}"
        )
    if "\x00" in name:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    return name


def check_table(table: object) -> str:
    return check_name("table", table, allow_empty=False)


def check_key(key: object) -> str:
    return check_name("key", key, allow_empty=True)


def _check_json(value: object, path: str, depth: int) -> None:
    t = type(value)
    if t is str:
        if _has_surrogate(value):  # type: ignore[arg-type]
            raise InvalidArgument(f"value{path}: string contains a lone surrogate")
    elif t is int or t is bool or value is None:
        pass
    elif t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidArgument(f"value{path}: {value!r} is not a finite number (no JSON form)")
    elif depth >= MAX_DEPTH:
        raise InvalidArgument(f"value{path}: nested deeper than {MAX_DEPTH} levels")
    elif t is list:
        for i, item in enumerate(value):  # type: ignore[arg-type]
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif t is dict:
        for k, item in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise InvalidArgument(
                    f"value{path}: object keys must be str, got {type(k).__name__} {k!r:.40}"
                )
            if _has_surrogate(k):
                raise InvalidArgument(f"value{path}: object key contains a lone surrogate")
            _check_json(item, f"{path}[{k!r:.40}]", depth + 1)
    elif isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(
            f"value{path}: bytes are allowed only as a whole value, not inside JSON"
        )
    else:
        # Subclasses (tuple, set, IntEnum, custom dicts) are refused on purpose: they would not
        # come back as the type that went in.
        hint = " (use a list)" if isinstance(value, tuple | set | frozenset) else ""
        raise InvalidArgument(
            f"value{path}: {type(value).__name__} is not a JSON value or bytes{hint}"
        )


def encode_value(value: object) -> str | bytes:
    """Validate ``value`` and return its stored form (JSON text, or bytes for a BLOB)."""
    t = type(value)
    if t is bytes:
        return value  # type: ignore[return-value]
    if t is bytearray or t is memoryview:
        return bytes(value)  # type: ignore[arg-type]
    # Fast path for the common scalar cases on the hot path; the walk handles the rest.
    if t is not int and t is not bool and value is not None:
        _check_json(value, "", 0)
    return _encode(value)


def decode_value(stored: object) -> Value:
    """Inverse of :func:`encode_value`; NULL (a tombstone) decodes to None."""
    if stored is None:
        return None
    if type(stored) is str:
        return _decode(stored)
    return bytes(stored)  # type: ignore[arg-type]


def canonical(value: Value) -> object:
    """A form in which two values compare equal iff they are the same stored value.

    Python's ``==`` says ``1 == 1.0 == True``; the store does not (they are different JSON),
    so conditional writes compare canonical forms: sorted-key JSON text, or tagged bytes.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return ("bytes", bytes(value))
    return ("json", json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False,
                               separators=(",", ":")))
