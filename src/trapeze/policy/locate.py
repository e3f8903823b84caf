"""Find the line of a table header, a key or a value in raw TOML text.

``tomllib`` returns plain dicts without positions, yet every manifest error must name a line.
This is a deliberately small scanner, not a TOML parser: it only has to know where headers and
``key =`` lines are, and must not mistake the inside of a string or a multi-line array for one.
When it cannot find the exact spot it falls back to the nearest enclosing thing it did find
(the key of an inline table, the section header, line 1) — a slightly wider line is better
than none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class _Header:
    path: Path_
    array: bool  # [[path]]
    nth: int  # occurrence among headers with the same path and kind
    line: int


@dataclass(frozen=True)
class _Entry:
    table: Path_  # the table the key sits in
    nth: int | None  # occurrence of an array-of-tables header, None for plain tables
    key: Path_  # the (possibly dotted) key, relative to `table`
    start: int
    end: int  # last line of the value (multi-line arrays, strings, inline tables)

    @property
    def full(self) -> Path_:
        return self.table + self.key


class _Cursor:
    """Character cursor over one line, used by the key and value scanners."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def at_end(self) -> bool:
        return self.i >= len(self.text)


def _read_key(cur: _Cursor) -> Path_ | None:
    """Read a dotted key (bare, "basic" or 'literal' parts); None if there is none here."""
    parts: list[str] = []
    while True:
        cur.skip_ws()
        ch = cur.peek()
        if ch == '"':
            j = cur.i + 1
            while j < len(cur.text) and cur.text[j] != '"':
                j += 2 if cur.text[j] == "\\" else 1
            raw = cur.text[cur.i : j + 1]
            try:
                parts.append(json.loads(raw))
            except ValueError:
                # TOML escapes JSON lacks (\e, \UXXXXXXXX): the literal text still locates it.
                parts.append(raw[1:-1])
            cur.i = j + 1
        elif ch == "'":
            j = cur.text.find("'", cur.i + 1)
            if j < 0:
                return None
            parts.append(cur.text[cur.i + 1 : j])
            cur.i = j + 1
        else:
            j = cur.i
            while j < len(cur.text) and (cur.text[j].isalnum() or cur.text[j] in "_-"):
                j += 1
            if j == cur.i:
                return None
            parts.append(cur.text[cur.i : j])
            cur.i = j
        cur.skip_ws()
        if cur.peek() != ".":
            return tuple(parts)
        cur.i += 1


class Locator:
    """Positions of headers, keys and values in one TOML document (lines are 1-based)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._headers: list[_Header] = []
        self._entries: list[_Entry] = []
        self._scan()

    # ----------------------------------------------------------------- scanning
    def _scan(self) -> None:
        table: Path_ = ()
        nth: int | None = None
        counts: dict[tuple[Path_, bool], int] = {}
        depth = 0  # open [ and { of a value that continues on later lines
        mlstring: str | None = None  # the delimiter of an open multi-line string
        current: _Entry | None = None  # the entry whose value is still open

        for lineno, line in enumerate(self.lines, start=1):
            cur = _Cursor(line)
            if mlstring is None and depth == 0:
                cur.skip_ws()
                if cur.peek() == "[":
                    array = cur.peek(2) == "[["
                    cur.i += 2 if array else 1
                    path = _read_key(cur)
                    if path is not None:
                        n = counts.get((path, array), 0)
                        counts[(path, array)] = n + 1
                        self._headers.append(_Header(path, array, n, lineno))
                        table, nth = path, (n if array else None)
                    continue
                key = _read_key(cur)
                if key is None or cur.peek() != "=":
                    continue
                cur.i += 1
                current = _Entry(table, nth, key, lineno, lineno)
            depth, mlstring = self._scan_value(cur, depth, mlstring)
            if current is not None:
                current = _Entry(current.table, current.nth, current.key, current.start, lineno)
                if depth == 0 and mlstring is None:
                    self._entries.append(current)
                    current = None
        if current is not None:
            self._entries.append(current)

    @staticmethod
    def _scan_value(cur: _Cursor, depth: int, mlstring: str | None) -> tuple[int, str | None]:
        text = cur.text
        while not cur.at_end():
            if mlstring is not None:
                j = text.find(mlstring, cur.i)
                if j < 0:
                    return depth, mlstring
                cur.i = j + 3
                mlstring = None
                continue
            ch = text[cur.i]
            if ch == "#":
                break
            if cur.peek(3) in ('"""', "'''"):
                mlstring = cur.peek(3)
                cur.i += 3
            elif ch == '"':
                j = cur.i + 1
                while j < len(text) and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                cur.i = j + 1
            elif ch == "'":
                j = text.find("'", cur.i + 1)
                cur.i = len(text) if j < 0 else j + 1
            else:
                if ch in "[{":
                    depth += 1
                elif ch in "]}":
                    depth = max(0, depth - 1)
                cur.i += 1
        return depth, mlstring

    # ----------------------------------------------------------------- lookups
    def header(self, path: Path_, nth: int | None = None) -> int | None:
        """Line of ``[path]`` (or of the nth ``[[path]]``), or None if not written as a header."""
        for h in self._headers:
            if h.path == path and (h.nth == nth if nth is not None else not h.array):
                return h.line
        return None

    def _entry(self, path: Path_, key: Path_, nth: int | None) -> _Entry | None:
        for e in self._entries:
            if nth is not None:
                if e.table == path and e.nth == nth and e.key == key:
                    return e
            elif e.full == path + key and e.nth is None:
                return e
        return None

    def line(
        self,
        path: Path_,
        key: Path_ | str = (),
        *,
        nth: int | None = None,
        value: str | None = None,
    ) -> int:
        """Best line for ``key`` inside table ``path`` (nth element of an array of tables).

        With ``value``, the line inside the key's value where that string is quoted (the
        element of a multi-line array). Falls back to the enclosing key, header or line 1.
        """
        if isinstance(key, str):
            key = (key,)
        while key:
            entry = self._entry(path, key, nth)
            if entry is not None:
                if value is not None:
                    found = self._find_value(entry, value)
                    if found is not None:
                        return found
                return entry.start
            key = key[:-1]
            value = None
        return self.section(path, nth=nth)

    def section(self, path: Path_, *, nth: int | None = None) -> int:
        """Line where table ``path`` is introduced, however it was written."""
        while path:
            line = self.header(path, nth)
            if line is not None:
                return line
            # Implicit tables (`[functions.x]` introduces `functions`), dotted keys and inline
            # tables: the first line that writes anything under this path.
            for h in self._headers:
                if h.path[: len(path)] == path:
                    return h.line
            for e in self._entries:
                if e.full[: len(path)] == path:
                    return e.start
            path = path[:-1]
            nth = None
        return 1

    def key_line(self, path: Path_, key: str) -> int | None:
        """Line of ``key =`` directly in table ``path``, or None (no fallback)."""
        entry = self._entry(path, (key,), None)
        return entry.start if entry else None

    def _find_value(self, entry: _Entry, value: str) -> int | None:
        needles = (json.dumps(value), f"'{value}'")
        for lineno in range(entry.start, entry.end + 1):
            text = self.lines[lineno - 1]
            if lineno == entry.start:
                # Skip the key itself: `"client:*" = ["client:*"]` must find the value.
                text = text.split("=", 1)[1] if "=" in text else text
            if any(n in text for n in needles):
                return lineno
        return None
