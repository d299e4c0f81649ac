"""Build the plugin manager: built-in plugins, then entry points, then the lab's own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .errors import BuildError

#: Plugins that ship with vmbuild, registered before any other.
BUILTIN_PLUGINS = (
    "vmbuild_plugins.cloudinit",
    "vmbuild_plugins.identity",
    "vmbuild_plugins.network",
)


def make_plugin_manager(builtins: Iterable[str] = BUILTIN_PLUGINS) -> pluggy.PluginManager:
    import importlib

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in builtins:
        manager.register(importlib.import_module(name), name=name)
    manager.check_pending()
    return manager


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key, lists concatenate, anything else is replaced."""
    out = dict(base)
    for key, value in extra.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = deep_merge(out[key], value)
        elif key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out


def merged(results: Iterable[Mapping[str, Any] | None], hook: str) -> dict[str, Any]:
    """Merge a collected hook's results. pluggy returns the last-registered
    plugin's result first, so the list is reversed into registration order."""
    out: dict[str, Any] = {}
    for result in reversed(list(results)):
        if result is None:
            continue
        if not isinstance(result, Mapping):
            raise BuildError(f"a plugin's {hook} returned {type(result).__name__}, not a mapping")
        out = deep_merge(out, result)
    return out
