"""Reference orders used by the documentation, the tests and the benchmarks.

`HELLO_RETAIL` is the lattice of DESIGN §3 (the Hello Retail case study) as a Hasse diagram:
each label maps to the labels directly above it; `name:*` is a parametric family.
"""

from __future__ import annotations

HELLO_RETAIL: dict[str, list[str]] = {
    "bottom": ["public"],
    "public": ["client:*", "photographer:*"],
    "client:*": ["owner", "client-cc:*"],
    "client-cc:*": ["cc-company"],
    "photographer:*": ["owner"],
    "owner": ["top"],
    "cc-company": ["top"],
}
