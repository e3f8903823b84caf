"""Import an app's trusted policy module (declassifiers) into the monitor.

The policy module is part of the trusted base (DESIGN §6): it runs in the monitor, never in
the sandbox. Validation only parses it; this is the one place that executes it, at start.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

from trapeze.errors import ConfigError
from trapeze.policy.specs import Manifest


def load_policy_module(manifest: Manifest) -> dict[str, Callable[..., Any]]:
    """Map each declared declassifier's name to its callable in the policy module.

    The module gets a fresh, unique name, so two apps (or two loads in one test run) never
    share module state and an app cannot shadow a platform module by naming its file after it.
    """
    if not manifest.declassifiers:
        return {}
    path = manifest.policy_path
    if path is None:
        raise ConfigError(
            f"{manifest.path}: declassifiers are declared but [app] names no policy module "
            f'— write policy = "policy.py" in [app] instead'
        )
    name = f"trapeze_policy_{manifest.name.replace('-', '_').replace('.', '_')}_{uuid.uuid4().hex}"
    # Compiled from the source file's own bytes, never from a bytecode cache: the import
    # system would run <app>/__pycache__/policy.*.pyc whenever its recorded mtime and size
    # match the source, so a planted .pyc (written, say, by a function running unconfined in
    # the IFC-off baseline on the same app directory) replaced the reviewed policy (review).
    try:
        source = path.read_bytes()
        code = compile(source, str(path), "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be compiled as a Python module: {exc}") from exc
    module = types.ModuleType(name)
    module.__file__ = str(path)
    # Registered while it runs so that dataclasses, pickling and the like, which look the
    # module up by name, work inside it.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{path}: importing the policy module failed: {exc!r}") from exc
    out: dict[str, Callable[..., Any]] = {}
    for decl in manifest.declassifiers.values():
        fn = getattr(module, decl.function, None)
        if not callable(fn):
            raise ConfigError(
                f"{path}: declassifier '{decl.name}' names '{decl.function}', which the policy "
                f"module does not define as a callable — write def {decl.function}(...) there "
                f"instead"
            )
        out[decl.name] = fn
    return out
