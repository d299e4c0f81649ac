"""Load the plugins and call their hooks: built-ins, then entry points, then the lab's.

A plugin is a module (or any object) with functions named after the hooks in
``vmbuild.plugins.hookspecs``. vmbuild calls each implementation itself, in pluggy's
call order (last registered first; ``tryfirst`` ahead, ``trylast`` behind), so that
an exception, an overrun or a wrong result names the plugin, the hook and the VM.
Results are combined in the reverse of that order: the implementation called first
has the last word. Hook wrappers are refused when a plugin is registered.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import posixpath
import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from xml.etree.ElementTree import Element

import pluggy
from vmbuild.errors import BuildError, Problem, ProfileError, UserError, VmbuildError
from vmbuild.guest.diskops import Operation
from vmbuild.host.files import file_digest
from vmbuild.host.interrupts import PLUGIN_TIMEOUT, Overran, deadline
from vmbuild.log import warn
from vmbuild.plugins import hookspecs

if TYPE_CHECKING:
    from vmbuild.model.facts import GuestFacts
    from vmbuild.model.plan import Plan, VmPlan
    from vmbuild.model.profile import Profile

#: Plugins that ship with vmbuild, registered before any other.
BUILTIN_PLUGINS = (
    "vmbuild_plugins.cloudinit",
    "vmbuild_plugins.identity",
    "vmbuild_plugins.network",
    "vmbuild_plugins.inventory",
)
ENTRY_POINT_GROUP = "vmbuild"
#: Comma-separated plugin names that are not loaded.
DISABLE_ENV = "VMBUILD_DISABLE_PLUGINS"

#: The seed ISO's own files, which only their own hooks write.
SEED_RESERVED = ("meta-data", "user-data", "network-config")
_SEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,29}")
#: What vmbuild itself writes in a bundle; plugins add files beside these.
BUNDLE_RESERVED = ("manifest.json", "SHA256SUMS", "plan.json", "define.sh")


@dataclass(frozen=True)
class PluginInfo:
    """One plugin, as ``vmbuild plugins`` lists it."""

    name: str
    #: "builtin", "entry point", "file" or "module".
    source: str
    #: The module, the distribution of an entry point, or the file's path.
    origin: str
    hooks: tuple[str, ...]
    #: sha256 of a lab plugin's source file: a change to it rebuilds the disks.
    sha256: str | None = None
    #: Named in VMBUILD_DISABLE_PLUGINS, so not loaded.
    disabled: bool = False

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "origin": self.origin,
            "hooks": list(self.hooks),
            "sha256": self.sha256,
            "disabled": self.disabled,
        }


class PluginError(BuildError):
    """A plugin raised an exception in a hook, or returned what the hook does not take."""

    HINT = "run with -v for the plugin's traceback"

    def __init__(
        self,
        plugin: str,
        hook: str,
        where: str,
        message: str,
        hint: str = "",
    ) -> None:
        message = f'plugin "{plugin}" failed in {hook}: {message}'
        super().__init__(message, place=where, hint=hint or self.HINT)
        self.plugin = plugin
        self.hook = hook


class _Manager(pluggy.PluginManager):
    """Takes every function named ``vmbuild_*`` as a hook implementation, marked or
    not, so that a misspelt hook is reported instead of silently never called."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("vmbuild_"):
            with contextlib.suppress(AttributeError):
                if inspect.isfunction(inspect.getattr_static(plugin, name)):
                    return cast(pluggy.HookimplOpts, {})
        return opts


HOOK_NAMES = tuple(
    name
    for name, value in vars(hookspecs).items()
    if name.startswith("vmbuild_") and inspect.isfunction(value)
)


class Plugins:
    """The loaded plugins, and one typed method per hook that calls them in pluggy's
    order and combines their results in the reverse order."""

    def __init__(self, manager: pluggy.PluginManager, infos: Sequence[PluginInfo]) -> None:
        self.manager = manager
        self.infos = tuple(infos)

    def inputs(self) -> list[Any]:
        """What the disks are built from, as far as plugins go: every loaded plugin's
        name, with the digest of its file for those the profile names."""
        return [
            info.name if info.sha256 is None else [info.name, info.sha256]
            for info in self.infos
            if not info.disabled
        ]

    # ------------------------------------------------------------------ calling

    def call_order(self, hook: str) -> list[pluggy.HookImpl]:
        """A hook's implementations in the order pluggy calls them.

        pluggy keeps them as [trylast..., others..., tryfirst...], a new trylast one
        going to the very front and any other to the back of its group, and calls
        that list from its end: the tryfirst ones and then the others, each the last
        registered first; then the trylast ones, the first registered first. (There
        are no wrappers: ``_register`` refuses them.)
        """
        return list(reversed(getattr(self.manager.hook, hook).get_hookimpls()))

    def _call(self, hook: str, where: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Each implementation's result, with its plugin's name, in call order.

        Arguments are passed as pluggy passes them: every argument without a default,
        and those with a default that the hook provides (the others keep theirs).
        """
        results = []
        for impl in self.call_order(hook):
            args = [kwargs[name] for name in impl.argnames]
            optional = {name: kwargs[name] for name in impl.kwargnames if name in kwargs}
            try:
                with deadline(PLUGIN_TIMEOUT):
                    result = impl.function(*args, **optional)
            except Overran as err:
                raise PluginError(
                    impl.plugin_name,
                    hook,
                    where,
                    f"{err}",
                    hint=f"VMBUILD_PLUGIN_TIMEOUT (now {PLUGIN_TIMEOUT:g}s) sets how long a "
                    "hook may take",
                ) from None
            except VmbuildError as err:  # the plugin's own error: its words, its exit code
                failure = PluginError(impl.plugin_name, hook, where, err.message, err.hint)
                failure.exit_code = err.exit_code
                raise failure from err
            except Exception as err:  # a plugin's bug, reported as such
                raise PluginError(
                    impl.plugin_name, hook, where, f"{type(err).__name__}: {err}"
                ) from err
            results.append((impl.plugin_name, result))
        return results

    def _results(self, hook: str, where: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Every result in the order they combine: call order reversed.

        Each result is laid over the ones before it, so the implementation called
        first (a tryfirst one, else the last registered) has the last word, and
        without tryfirst/trylast this is registration order: built-ins, installed
        plugins, then the lab's own, which override them.
        """
        return self._call(hook, where, **kwargs)[::-1]

    def _mappings(
        self, hook: str, where: str, **kwargs: Any
    ) -> list[tuple[str, Mapping[str, Any]]]:
        out = []
        for plugin, result in self._results(hook, where, **kwargs):
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(
                    plugin, hook, where, f"returned {type(result).__name__}, not a mapping"
                )
            out.append((plugin, result))
        return out

    def _merged(self, hook: str, where: str, **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _plugin, result in self._mappings(hook, where, **kwargs):
            out = deep_merge(out, result)
        return out

    def _files(self, hook: str, where: str, check: Any, **kwargs: Any) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for plugin, result in self._mappings(hook, where, **kwargs):
            for name, data in result.items():
                problem = check(name)
                if problem:
                    raise PluginError(plugin, hook, where, f"file name {name!r} {problem}")
                if isinstance(data, str):
                    data = data.encode()
                if not isinstance(data, bytes):
                    raise PluginError(
                        plugin,
                        hook,
                        where,
                        f"{name}: contents are {type(data).__name__}, not bytes or str",
                    )
                files[name] = data
        return files

    # -------------------------------------------------------------------- hooks

    def check_profile(self, profile: Profile) -> list[Problem]:
        problems: list[Problem] = []
        for plugin, result in self._results("vmbuild_check_profile", "", profile=profile):
            for problem in result or ():
                if not isinstance(problem, Problem):
                    raise PluginError(
                        plugin,
                        "vmbuild_check_profile",
                        "",
                        f"returned {type(problem).__name__}, not a vmbuild.errors.Problem",
                    )
                problems.append(problem)
        return problems

    def plan_vm(self, lab: Plan, vm: VmPlan) -> dict[str, Any]:
        hook = "vmbuild_plan_vm"
        extra: dict[str, Any] = {}
        for plugin, result in self._mappings(hook, vm.place, lab=lab, vm=vm):
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as err:
                message = f"returned data that is not JSON: {err}"
                raise PluginError(plugin, hook, vm.place, message) from None
            extra = deep_merge(extra, result)
        return extra

    def disk_operations(self, lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
        hook = "vmbuild_disk_operations"
        operations: list[Operation] = []
        for plugin, result in self._results(hook, vm.place, lab=lab, vm=vm, guest=guest):
            for operation in result or ():
                if not isinstance(operation, Operation):
                    raise PluginError(
                        plugin,
                        hook,
                        vm.place,
                        f"returned {type(operation).__name__}, "
                        "not a vmbuild.guest.diskops.Operation",
                    )
                operations.append(operation)
        return operations

    def user_data(self, lab: Plan, vm: VmPlan) -> dict[str, Any]:
        return self._merged("vmbuild_user_data", vm.place, lab=lab, vm=vm)

    def network_config(self, lab: Plan, vm: VmPlan) -> dict[str, Any]:
        return self._merged("vmbuild_network_config", vm.place, lab=lab, vm=vm)

    def seed_files(self, lab: Plan, vm: VmPlan) -> dict[str, bytes]:
        return self._files("vmbuild_seed_files", vm.place, _check_seed_name, lab=lab, vm=vm)

    def domain_xml(self, lab: Plan, vm: VmPlan, domain: Element) -> None:
        self._call("vmbuild_domain_xml", vm.place, lab=lab, vm=vm, domain=domain)

    def bundle_files(
        self, lab: Plan, root: str, host_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, bytes]:
        return self._files(
            "vmbuild_bundle_files", "", _check_bundle_path, lab=lab, root=root, host_keys=host_keys
        )

    def build_finished(self, lab: Plan, bundle: Path, manifest: Mapping[str, Any]) -> None:
        where = f"the bundle {bundle} is published, but"
        self._call("vmbuild_build_finished", where, lab=lab, bundle=bundle, manifest=manifest)


def _check_seed_name(name: Any) -> str:
    if not isinstance(name, str) or not _SEED_NAME.fullmatch(name):
        return "is not a plain file name of at most 30 letters, digits, '.', '_' or '-'"
    if name in SEED_RESERVED:
        return f"is the seed's own {name}; return it from its own hook"
    return ""


def _check_bundle_path(name: Any) -> str:
    from vmbuild.model.profile import control_character

    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        return "is not a relative path"
    found = control_character(name)
    if found:
        return f"contains a control character ({found})"
    if name.startswith("/") or ".." in name.split("/") or posixpath.normpath(name) != name:
        return "must be a normalised path inside the bundle"
    if name in BUNDLE_RESERVED or name.split("/")[0] == "vms":
        return "is one of vmbuild's own files"
    return ""


# ------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key, lists concatenate, anything else is replaced."""
    out = dict(base)
    for key, value in extra.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = deep_merge(out[key], value)
        elif key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = [*out[key], *value]
        elif isinstance(value, Mapping):
            out[key] = deep_merge({}, value)
        else:
            out[key] = value
    return out


def disabled_names() -> list[str]:
    text = os.environ.get(DISABLE_ENV, "")
    return [name.strip() for name in text.split(",") if name.strip()]


def _is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith(".py")


def _load_file(path: Path, where: str) -> types.ModuleType:
    if not path.is_file():
        raise UserError(f"no such file {path}", place=where)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"vmbuild_lab_plugin_{digest}_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path} cannot be loaded as a Python module", place=where)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(module_name, None)
        raise UserError(
            f"{path} failed to load: {_describe(err)}",
            place=where,
            hint="run with -v for the traceback",
        ) from err
    return module


def _import(module: str, where: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as err:
        raise UserError(
            f"cannot import {module}: {_describe(err)}",
            place=where,
            hint="run with -v for the traceback",
        ) from err


def _describe(err: BaseException) -> str:
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} (line {err.lineno})"
    return f"{type(err).__name__}: {err}"


def _register(manager: pluggy.PluginManager, plugin: Any, name: str, where: str) -> tuple[str, ...]:
    """Register one plugin and return the hooks it implements; refuse unknown hooks."""
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as err:
        first = str(err).splitlines()[-1]
        raise UserError(first, place=where) from None
    except ValueError:
        raise UserError(f"a plugin named {name!r} is already loaded", place=where) from None
    hooks = []
    for caller in manager.get_hookcallers(plugin) or ():
        if not caller.has_spec():
            manager.unregister(plugin)
            close = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1)
            raise UserError(
                f"{caller.name} is not a vmbuild hook",
                place=where,
                hint=f"did you mean {close[0]}?" if close else "see docs/plugins.md",
            )
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            problem = _unsupported(impl)
            if problem:
                manager.unregister(plugin)
                raise UserError(f"{caller.name} {problem}", place=where, hint=_ORDER_HINT)
        hooks.append(caller.name)
    return tuple(sorted(hooks, key=HOOK_NAMES.index))


_ORDER_HINT = (
    "use @hookimpl(tryfirst=True) or @hookimpl(trylast=True) to be called before or "
    "after the other plugins; docs/plugins.md explains the call order"
)


def _unsupported(impl: pluggy.HookImpl) -> str:
    """Why vmbuild cannot honour an implementation's options, or ''.

    A wrapper runs around every other implementation of its hook and may replace
    their results or swallow their exceptions; vmbuild calls each implementation on
    its own, so that a failure or an overrun is reported against that one plugin.
    """
    if impl.hookwrapper or impl.wrapper:
        kind = "hookwrapper" if impl.hookwrapper else "wrapper"
        return (
            f"is a hook wrapper ({kind}=True); vmbuild calls each plugin's "
            "implementation on its own, with its own timeout and error report, and "
            "runs no wrappers around them"
        )
    if impl.tryfirst and impl.trylast:
        return "is marked both tryfirst and trylast; choose one"
    return ""


class _Loader:
    """Registers plugins one by one, recording where each came from."""

    def __init__(self, disabled: Sequence[str]) -> None:
        self.manager = _Manager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.disabled = tuple(disabled)
        for name in self.disabled:
            self.manager.set_blocked(name)
        self.infos: list[PluginInfo] = []

    def _skip(self, name: str, source: str, origin: str) -> bool:
        """True for a plugin named in VMBUILD_DISABLE_PLUGINS: listed, never loaded."""
        if not self.manager.is_blocked(name):
            return False
        self.infos.append(PluginInfo(name, source, origin, (), disabled=True))
        return True

    def _add(
        self, plugin: Any, name: str, source: str, origin: str, where: str, sha256: str | None
    ) -> None:
        hooks = _register(self.manager, plugin, name, where)
        self.infos.append(PluginInfo(name, source, origin, hooks, sha256))

    def builtin(self, name: str) -> None:
        if not self._skip(name, "builtin", name):
            self._add(importlib.import_module(name), name, "builtin", name, f"plugin {name}", None)

    def entry_point(self, entry: importlib.metadata.EntryPoint) -> None:
        dist = entry.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else entry.value
        where = f'entry point "{entry.name}" ({origin}, {entry.value})'
        if self._skip(entry.name, "entry point", origin):
            return
        try:
            plugin = entry.load()
        except Exception as err:
            raise UserError(
                f"cannot load: {_describe(err)}", place=where, hint="run with -v for the traceback"
            ) from err
        self._add(plugin, entry.name, "entry point", origin, where, None)

    def lab_file(self, profile: Profile, spec: str) -> None:
        where = f'{profile.path}: plugins: "{spec}"'
        path = (profile.folder / spec).resolve()
        for info in self.infos:
            if info.source == "file" and info.origin == str(path):
                raise UserError(f'the same file as "{info.name}"', place=where)
        if not self._skip(spec, "file", str(path)):
            module = _load_file(path, where)
            self._add(module, spec, "file", str(path), where, file_digest(path))

    def lab_module(self, profile: Profile, spec: str) -> None:
        where = f'{profile.path}: plugins: "{spec}"'
        if self._skip(spec, "module", spec):
            return
        module = _import(spec, where)
        file = getattr(module, "__file__", None)
        digest = file_digest(Path(file)) if file and Path(file).is_file() else None
        self._add(module, spec, "module", file or spec, where, digest)


def load_plugins(profile: Profile | None = None, *, check: bool = True) -> Plugins:
    """The built-in plugins, then installed ones (entry points), then the profile's.

    Plugins named in VMBUILD_DISABLE_PLUGINS are left out (and a lab plugin so named
    is not even imported). With ``check``, the plugins' profile checks run too.
    """
    loader = _Loader(disabled_names())
    for name in BUILTIN_PLUGINS:
        loader.builtin(name)
    entries = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry in sorted(entries, key=lambda e: e.name):
        loader.entry_point(entry)
    if profile is not None:
        for spec in profile.plugins:
            if _is_path(spec):
                loader.lab_file(profile, spec)
            else:
                loader.lab_module(profile, spec)
    known = {info.name for info in loader.infos}
    for name in loader.disabled:
        if name not in known:
            warn(f"{DISABLE_ENV} names {name}, which is not a plugin of this lab")
    loader.manager.check_pending()
    plugins = Plugins(loader.manager, loader.infos)
    if check and profile is not None:
        problems = plugins.check_profile(profile)
        if problems:
            raise ProfileError(str(profile.path), problems)
    return plugins
