"""The official Kubernetes client without its 800 generated classes in memory.

`import kubernetes_asyncio` (which kopf does too, to offer its credentials) imports the package
`kubernetes_asyncio.client`, whose `__init__` imports every generated API class and model class:
about 1,200 modules, some 50 MiB of the operator's resident memory, for classes it never uses (kube.py
sends every request through `ApiClient.call_api` with plain JSON bodies and answers; kopf talks to
the API server with its own aiohttp client). `install` (at startup, before kopf or kube.py import
the client) puts in `sys.modules`, for `kubernetes_asyncio.client` and its `api` and `models`
packages, modules that import a name on first use instead: the package's own `__init__` names which
submodule defines it (`from <submodule> import <Name>` lines, read as text). Submodules
(`api_client`, `configuration`, `exceptions`, `rest`, one model...) are imported as usual from the
package's directory. `STRATA_OPERATOR_LAZY_CLIENT=0` leaves the client as it is.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

PACKAGES = ("kubernetes_asyncio.client", "kubernetes_asyncio.client.api", "kubernetes_asyncio.client.models")
_FROM = re.compile(r"^from ([\w.]+) import (\w+)\s*$", re.MULTILINE)


def _lazy_package(name: str, directory: str) -> types.ModuleType:
    """A package module for `name` whose names (the `from X import Name` lines of its __init__.py)
    are imported when first read; its submodules load from `directory` as a real package's would."""
    init = os.path.join(directory, "__init__.py")
    with open(init, encoding="utf-8") as f:
        source = f.read()
    where = {attr: module for module, attr in _FROM.findall(source)}
    version = re.search(r'^__version__ = "([^"]+)"', source, re.MULTILINE)
    module = types.ModuleType(name, f"{name} (names imported on first use: strata_operator.lazyclient)")
    spec = importlib.machinery.ModuleSpec(name, None, origin=init, is_package=True)
    spec.submodule_search_locations = [directory]
    module.__spec__, module.__path__, module.__file__, module.__package__ = spec, [directory], init, name
    if version:
        module.__version__ = version.group(1)  # type: ignore[attr-defined]

    def __getattr__(attr: str) -> Any:
        if attr in where:
            value = getattr(importlib.import_module(where[attr]), attr)
        elif not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            value = importlib.import_module(f"{name}.{attr}")  # a submodule named as an attribute
        else:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        setattr(module, attr, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(module)))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    return module


def install(env: Mapping[str, str] | None = None) -> bool:
    """Put the lazy packages in place (see the module docstring); True when done. Nothing when the
    client is already imported, not installed, or STRATA_OPERATOR_LAZY_CLIENT is 0."""
    if (env if env is not None else os.environ).get("STRATA_OPERATOR_LAZY_CLIENT", "1") == "0":
        return False
    if any(name in sys.modules for name in ("kubernetes_asyncio", *PACKAGES)):
        return False
    top = importlib.util.find_spec("kubernetes_asyncio")  # finds it without importing it
    if top is None or not top.submodule_search_locations:
        return False
    root = list(top.submodule_search_locations)[0]
    modules = {}
    for name in PACKAGES:
        directory = os.path.join(root, *name.split(".")[1:])
        if not os.path.isfile(os.path.join(directory, "__init__.py")):
            return False
        modules[name] = _lazy_package(name, directory)
    sys.modules.update(modules)
    client = modules["kubernetes_asyncio.client"]
    client.api = modules["kubernetes_asyncio.client.api"]  # type: ignore[attr-defined]
    client.models = modules["kubernetes_asyncio.client.models"]  # type: ignore[attr-defined]
    import kubernetes_asyncio  # its __init__ binds `client` to the lazy package

    kubernetes_asyncio.client = client  # type: ignore[attr-defined]
    return True
