"""Public names resolved on first use (PEP 562), shared by the package ``__init__`` files.

``import r2.evaluate`` must not pull in torch, and ``import r2`` must not pull in anything: a
package lists its public names with the module that defines each, and imports that module
only when the name is first read::

    _LAZY = {"score": ".api", "R2Model": "r2.model"}   # relative to the package, or absolute
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str],
                 namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for the names in
    ``table`` (name -> defining module); a resolved name is cached in ``namespace``."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
