"""Trapeze for Python: serverless functions under dynamic information flow control.

`from trapeze import App` is the embedding API. The import is lazy so that code running in a
sandbox, which imports only `trapeze.guest`, never loads the trusted runtime's modules.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["App", "InvocationResult", "Runtime", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("App", "Runtime"):
        from trapeze.runtime import app

        return getattr(app, name)
    if name == "InvocationResult":
        from trapeze.runtime.invoker import InvocationResult

        return InvocationResult
    raise AttributeError(f"module 'trapeze' has no attribute {name!r}")
