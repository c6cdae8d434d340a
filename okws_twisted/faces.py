"""
Package faces that import on first use.

Each process subpackage's C{__init__} names what other code uses of it (C{__all__}) without
importing it: importing one module of a subpackage (the pure C{dispatcher.proxyproto}, say)
must not load the whole process role, and the author API must not load the runtime.  Python's
module C{__getattr__} (PEP 562) resolves each name from its module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_face(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module C{__getattr__} for C{package}: C{names} maps each public name to its module."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
