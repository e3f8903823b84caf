"""Handlers for tests/attacks/test_review_zygote_state.py: what a child can learn about the
children before it from the zygote it was forked from, or from its slot's /tmp."""

import gc
import os
import sys


def _reachable_values():
    """The values in the zygote's main() frame (a child is a copy of the zygote, stack and
    heap) and in every container the collector tracks (the frozen ones included)."""
    seen = []
    f = sys._getframe()
    while f is not None:
        if f.f_code.co_name == "main":
            seen.extend(f.f_locals.values())
        f = f.f_back
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            seen.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            seen.extend(obj)
    return seen


def handler(event, context):
    what = event["attack"]
    if what == "exit_with":
        os._exit(event["code"])
    if what == "zygote_frames":
        names = set()  # the local names of the zygote's main() frame, the child's ancestor
        f = sys._getframe()
        while f is not None:
            if f.f_code.co_name == "main":
                names.update(f.f_locals)
            f = f.f_back
        status = int(event["status"])  # sent as text: the event itself holds no such int
        values = _reachable_values()
        found = any(type(v) is int and v == status for v in values) or any(
            type(v) is tuple and status in v for v in values)
        return {"names": sorted(names), "status_found": found}
    if what == "tmp_stat":
        st = os.stat("/tmp")
        if event.get("write"):
            with open("/tmp/used", "w") as fh:
                fh.write("x")
        return [st.st_dev, st.st_ctime_ns, st.st_ino]
    raise ValueError(what)
