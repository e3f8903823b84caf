"""Where invocations run (DESIGN §9).

* ``local`` (the default): the runtime's own Invoker runs every invocation in this process's
  sandboxes (one zygote per function, confined children).
* ``ray``: the runtime keeps the gateway, the principals and the stream and workflow engines,
  and sends every top-level invocation to a node agent of a Ray cluster, which runs it in
  that node's sandboxes under the same confinement and its own monitor (``ray.py`` on the
  gateway side, ``ray_node.py`` on the node side; docs/scaling.md).
"""

from __future__ import annotations

from trapeze.errors import ConfigError

EXECUTORS = ("local", "ray")


def check_executor(executor: str, store_url: str, *, ifc: bool) -> None:
    """Refuse combinations that cannot work, before anything starts."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if executor != "ray":
        return
    scheme = store_url.split("://", 1)[0].lower() if "://" in store_url else ""
    if scheme not in ("postgresql", "postgres"):
        # Only the scheme is named: the URL may carry a password.
        shown = f"a {scheme!r} store" if scheme else "that store"
        raise ConfigError(
            f"the Ray executor keeps all state in PostgreSQL, shared by every node, and "
            f"cannot use {shown}: pass --store postgresql://USER@HOST:PORT/DBNAME "
            f"(store=... in the Python API)"
        )
    if not ifc:
        raise ConfigError("the IFC-off baseline (--no-ifc) runs only on the local executor")
