"""The store interface every backend implements, and the label-bound view of it.

The semantics are DESIGN §5; docs/store.md spells out the decisions the design leaves open
(tombstones in ``facets``, equality for ``expect``, labels unknown to the current lattice).
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from trapeze.errors import ConfigError
from trapeze.store.values import Value

if TYPE_CHECKING:
    from trapeze.store.system import SystemTables


class StoreSchemaError(ConfigError):
    """The store (SQLite file or PostgreSQL schema) holds a schema version this version of
    Trapeze cannot use."""


def refuse_newer_schema(have: int | None, ours: int, holder: str, elsewhere: str) -> None:
    """Raise StoreSchemaError when the stored version `have` is newer than `ours`.

    `holder` names what holds it ("the store file X holds faceted tables"), `elsewhere`
    where else the URL could point ("another file")."""
    if have is not None and have > ours:
        raise StoreSchemaError(
            f"{holder} of schema version {have}, newer than this Trapeze supports "
            f"(version {ours}): upgrade Trapeze, or point the store URL at {elsewhere}"
        )


def extend_label_names(n: int, names: list[str | None], ids: dict[str, int],
                       rows: list[tuple[int, str]]) -> tuple[int, list[str | None],
                                                            dict[str, int]]:
    """A label snapshot grown by ``rows`` of facet_labels (id, label): the new ``n`` (one past
    the highest id), the names by id and the ids by name, as new objects (the old snapshot
    stays valid for readers holding it). Rows never change once written, so ids below ``n``
    are already known and are skipped. Shared by both backends' label caches."""
    new_n = max(n, 1 + max((i for i, _ in rows), default=-1))
    new_names = names + [None] * (new_n - n)
    new_ids = ids.copy()
    for i, label in rows:
        if i >= n:
            new_names[i] = label
            new_ids[label] = i
    return new_n, new_names, new_ids


@final
class _Missing:
    """Sentinel for "no expectation" in ``put(..., expect=...)`` (None means "absent")."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"  # pickles as the module-level singleton


MISSING: Final = _Missing()


class _StoreAPI(abc.ABC):
    """Operations shared by the faceted and the plain store (the plain one ignores labels)."""

    system: SystemTables

    @abc.abstractmethod
    def get(self, table: str, key: str, *, label: str) -> Value | None: ...

    @abc.abstractmethod
    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Value, str]]: ...

    @abc.abstractmethod
    def put(
        self, table: str, key: str, value: Value, *, label: str, expect: object = MISSING
    ) -> bool: ...

    @abc.abstractmethod
    def delete(self, table: str, key: str, *, label: str) -> None: ...

    @abc.abstractmethod
    def scan(
        self,
        table: str,
        *,
        label: str,
        prefix: str = "",
        start_after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Value]]: ...

    @abc.abstractmethod
    def tables(self, *, label: str) -> list[str]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def view(self, label: str) -> StoreView:
        return StoreView(self, label)

    def __enter__(self) -> _StoreAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FacetedStore(_StoreAPI):
    """A faceted store (DESIGN §5). Every call runs at the caller's current ``label``.

    Backends also provide two trusted-side helpers that guests never reach:
    ``put_seq`` (``put`` returning the new facet's seq, or None when ``expect`` failed) and
    ``raw_facets`` (every facet of a key regardless of label, for invariant checks and admin).
    """

    @abc.abstractmethod
    def put_seq(
        self, table: str, key: str, value: Value, *, label: str, expect: object = MISSING,
        tombstone: bool = False,
    ) -> int | None: ...

    @abc.abstractmethod
    def raw_facets(self, table: str, key: str) -> list[tuple[int, str, Value, bool]]:
        """All facets of a key, newest first, as ``(seq, label, value, is_tombstone)``."""


class PlainStore(_StoreAPI):
    """The IFC-off baseline: same call shape, labels accepted and ignored, one value per key."""


class StoreView:
    """A store bound to one label: what the monitor hands an invocation, and ``rt.view(l)``."""

    __slots__ = ("store", "label")

    def __init__(self, store: _StoreAPI, label: str) -> None:
        self.store = store
        self.label = label

    def get(self, table: str, key: str) -> Value | None:
        return self.store.get(table, key, label=self.label)

    def facets(self, table: str, key: str) -> list[tuple[Value, str]]:
        return self.store.facets(table, key, label=self.label)

    def put(self, table: str, key: str, value: Value, *, expect: object = MISSING) -> bool:
        return self.store.put(table, key, value, label=self.label, expect=expect)

    def delete(self, table: str, key: str) -> None:
        self.store.delete(table, key, label=self.label)

    def scan(
        self, table: str, *, prefix: str = "", start_after: str | None = None, limit: int = 100
    ) -> list[tuple[str, Value]]:
        return self.store.scan(
            table, label=self.label, prefix=prefix, start_after=start_after, limit=limit
        )

    def tables(self) -> list[str]:
        return self.store.tables(label=self.label)

    def __repr__(self) -> str:
        return f"StoreView({self.store!r}, {self.label!r})"
