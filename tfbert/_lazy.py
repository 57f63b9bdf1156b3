"""Names of a package imported on first use (PEP 562 module __getattr__)."""

import importlib


def lazy_getattr(package, exports):
    """A module `__getattr__` for `package` that imports `exports[name]` (a module path)
    the first time `name` is looked up and returns its attribute `name`."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
