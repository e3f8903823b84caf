"""The line locator: headers, keys and values in raw TOML, without being fooled by strings."""

from __future__ import annotations

from trapeze.policy.locate import Locator

TEXT = '''\
# [functions.fake] in a comment
title = "a = b"
[labels]
"client:*" = ["owner"]
public = [
  "client:*",   # a comment with "quotes"
  'staff:*',
]
[functions.a]
handler = "x.py:h"
env = { STAGE = "dev", "K.Y" = "v" }
doc = """
[functions.b]
timeout = 1
"""
timeout = 5
[functions.b]
handler = "y.py:h"
[[routes]]
path = "/one"
[[routes]]
path = "/two"
methods = ["GET"]
[ "quoted section" . inner ]
"key with = sign" = 1
[streams]
s.consumers = ["a"]
'''


def test_headers_and_keys() -> None:
    loc = Locator(TEXT)
    assert loc.section(("labels",)) == 3
    assert loc.line(("labels",), "client:*") == 4
    assert loc.line(("functions", "a"), "handler") == 10
    assert loc.line(("functions", "a"), "timeout") == 16  # not the one inside the string
    assert loc.section(("functions", "b")) == 17  # not the one inside the string
    assert loc.line(("functions", "b"), "handler") == 18
    assert loc.line((), "title") == 2


def test_values_in_multiline_arrays() -> None:
    loc = Locator(TEXT)
    assert loc.line(("labels",), "public", value="client:*") == 6
    assert loc.line(("labels",), "public", value="staff:*") == 7
    # The key's own text is not taken for its value.
    assert loc.line(("labels",), "client:*", value="owner") == 4
    # A value that is not there falls back to the key.
    assert loc.line(("labels",), "public", value="nope") == 5


def test_arrays_of_tables_by_index() -> None:
    loc = Locator(TEXT)
    assert loc.section(("routes",), nth=0) == 19
    assert loc.line(("routes",), "path", nth=1) == 22
    assert loc.line(("routes",), "methods", nth=1) == 23
    assert loc.line(("routes",), "methods", nth=0) == 19  # absent there: its header


def test_quoted_headers_inline_tables_and_dotted_keys() -> None:
    loc = Locator(TEXT)
    assert loc.section(("quoted section", "inner")) == 24
    assert loc.line(("quoted section", "inner"), "key with = sign") == 25
    # Keys inside an inline table resolve to the line of the inline table.
    assert loc.line(("functions", "a", "env"), "STAGE") == 11
    assert loc.line(("functions", "a"), ("env", "K.Y")) == 11
    # Dotted keys introduce implicit tables.
    assert loc.section(("streams", "s")) == 27
    assert loc.line(("streams", "s"), "consumers") == 27
    # Implicit parent table: the first header under it.
    assert loc.section(("functions",)) == 9
    assert loc.section(("nowhere",)) == 1
