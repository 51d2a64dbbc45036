"""Load a plug-in named by import path: ``"package.module:attr"`` or ``"path/to/file.py:attr"``.

One loader for rewards, algorithms and allocators, so a user's file is found the same way
whatever it provides. Workers call it themselves (an algorithm's loss runs inside the learner
actors), so a file must be readable where they run: the start-up shared-filesystem check
(rlcore/topology.py) covers the plug-in files a config names. A file is executed once per
process, as a module named after its absolute path.

Standard library only: the algorithms package imports it and stays free of rlcore's weight.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from typing import Any, Callable

_LOCK = threading.Lock()
_FILE_MODULES: dict[str, Any] = {}


class PluginError(ValueError):
    """A plug-in path that cannot be resolved: the message names the spec and the reason."""


class OptionError(ValueError):
    """Raised by a plug-in's options dataclass (``__post_init__``): `key` is the offending field;
    the config loader reports it as ``section.options.<key>`` with its file and line."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def is_import_path(spec: str) -> bool:
    """``module:attr`` or ``file.py:attr`` (a registered name has no colon)."""
    return ":" in spec


def plugin_file(spec: str) -> str | None:
    """The absolute path of the file a ``file.py:attr`` spec names (None for a module or a name)."""
    target = spec.rpartition(":")[0]
    return os.path.abspath(target) if is_import_path(spec) and looks_like_file(target) else None


def looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def resolve(name: str, registry: dict[str, Any], what: str, accepts: Callable[[Any], bool], expected: str) -> Any:
    """`registry[name]`, or for an import path the object it names, checked with `accepts`.
    Raises KeyError (unknown name, listing the registered ones) or PluginError."""
    if is_import_path(name):
        found = load_object(name, what)
        if not accepts(found):
            raise PluginError(f"{what} spec {name!r} names {found!r}, not {expected}")
        return found
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; registered: {', '.join(sorted(registry))} "
                       "(or name one by import path, 'module:ATTR' or 'path/to/file.py:ATTR')") from None


def load_object(spec: str, what: str) -> Any:
    """The attribute a ``module:attr`` or ``file.py:attr`` spec names; `what` ("reward",
    "algorithm", ...) goes into the error messages. Relative file paths are relative to the
    current directory."""
    target, _, attr = spec.strip().rpartition(":")
    if not target or not attr:
        raise PluginError(f"bad {what} spec {spec!r}: expected 'module:attr' or 'path/to/file.py:attr'")
    if looks_like_file(target):
        module = _load_file(target, spec, what)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError, or any error raised while importing user code
            raise PluginError(f"cannot import module {target!r} for {what} spec {spec!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise PluginError(f"{what} spec {spec!r}: {target!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _load_file(path: str, spec: str, what: str) -> Any:
    abspath = os.path.abspath(path)
    with _LOCK:
        cached = _FILE_MODULES.get(abspath)
    if cached is not None:
        return cached
    if not os.path.isfile(abspath):
        raise PluginError(f"{what} spec {spec!r}: file not found: {abspath}")
    stem = os.path.splitext(os.path.basename(abspath))[0]
    name = f"_plugin_{stem}_{hashlib.sha1(abspath.encode()).hexdigest()[:10]}"
    module_spec = importlib.util.spec_from_file_location(name, abspath)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"{what} spec {spec!r}: cannot load {abspath} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before exec (importlib's recipe), so dataclasses and pickling inside it work.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(f"{what} spec {spec!r}: error executing {abspath}: {type(exc).__name__}: {exc}") from exc
    with _LOCK:
        _FILE_MODULES[abspath] = module
    return module
