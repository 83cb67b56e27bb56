"""Plugin loading and the registries of named factories.

Plugins are found through the `sdekit` entry-point group and loaded one at a time: one
that fails to import, names an unknown hook or registers something malformed is reported
by name and skipped, and never takes the others down.
"""

import dataclasses
import difflib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from ._errors import PluginError, UnknownNameError

#: kind -> the hook that registers it.
KINDS: dict[str, str] = {
    "target": "register_targets",
    "process": "register_processes",
    "score": "register_scores",
    "controller": "register_controllers",
    "sampler": "register_samplers",
    "diagnostic": "register_diagnostics",
}
#: Keyword arguments through which a factory receives parts composed before it.
PARTS = ("target", "process", "score", "controller")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: its kind, factory and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().split("\n\n")[0].replace("\n", " ")

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword parameters, composed parts included."""
        return dict(inspect.signature(self.factory).parameters)

    def options(self) -> dict[str, Any]:
        """User-settable options and their defaults (`inspect.Parameter.empty` if required)."""
        return {
            n: p.default
            for n, p in self.parameters().items()
            if n not in PARTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    plugin: str
    error: str


class Registry:
    """Every name registered by the loaded plugins, by kind."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.failures: list[PluginFailure] = []
        self._conflicts: dict[tuple[str, str], list[str]] = {}

    def add(self, kind: str, name: str, factory: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} with invalid name {name!r}")
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} with a non-callable factory "
                f"{factory!r}"
            )
        existing = self.entries[kind].get(name)
        if existing is not None:
            self._conflicts.setdefault((kind, name), [existing.plugin]).append(plugin)
            raise PluginError(
                f"{kind} {name!r} is registered by both plugin {existing.plugin!r} and "
                f"plugin {plugin!r}"
            )
        self.entries[kind][name] = Entry(kind, name, factory, plugin)

    def get(self, kind: str, name: str) -> Entry:
        if kind not in KINDS:
            raise UnknownNameError(_unknown("kind", kind, list(KINDS)))
        if (kind, name) in self._conflicts:
            plugins = " and ".join(repr(p) for p in self._conflicts[(kind, name)])
            raise PluginError(
                f"{kind} {name!r} is registered by plugins {plugins}; disable one with "
                f"SDEKIT_DISABLE_PLUGINS"
            )
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(_unknown(kind, name, list(self.entries[kind]))) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


def _unknown(kind: str, name: str, known: list[str]) -> str:
    msg = f"unknown {kind} {name!r}."
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    if close:
        msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return msg + " Available: " + (", ".join(sorted(known)) or "none") + "."


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_load_failures: list[PluginFailure] = []


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _report(failure: PluginFailure) -> None:
    warnings.warn(f"sdekit plugin {failure.plugin!r} skipped: {failure.error}", stacklevel=3)


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    pm.register(plugin, name=name)
    try:
        pm.check_pending()  # a misspelt hook name is an error, not a silent no-op
    except pluggy.PluginValidationError as e:
        pm.unregister(name=name)
        raise PluginError(str(e)) from e


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry-point plugins on first use.

    `SDEKIT_DISABLE_PLUGINS=a,b` skips plugins by name; `SDEKIT_LOAD_PLUGINS=a,b` loads
    only those (an empty value loads none).
    """
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("sdekit")
    pm.add_hookspecs(hookspecs)
    blocked = _env_list("SDEKIT_DISABLE_PLUGINS") or set()
    allowed = _env_list("SDEKIT_LOAD_PLUGINS")
    for ep in importlib.metadata.entry_points(group="sdekit"):
        if ep.name in blocked or (allowed is not None and ep.name not in allowed):
            continue
        if pm.has_plugin(ep.name):
            continue  # the same distribution seen twice on sys.path
        try:
            _register_checked(pm, ep.load(), ep.name)
        except Exception as e:  # noqa: BLE001 - any import-time failure of a plugin
            failure = PluginFailure(ep.name, f"{type(e).__name__}: {e}")
            _load_failures.append(failure)
            _report(failure)
    _pm = pm
    return pm


def registry() -> Registry:
    """The registries built from every loaded plugin (cached until plugins change)."""
    global _registry
    if _registry is not None:
        return _registry
    pm = plugin_manager()
    reg = Registry()
    reg.failures.extend(_load_failures)
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, factory, _kind=kind, _plugin=plugin):
                reg.add(_kind, name, factory, _plugin)

            try:
                impl.function(register=register)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the rest
                failure = PluginFailure(plugin, f"{hook_name}: {type(e).__name__}: {e}")
                reg.failures.append(failure)
                _report(failure)
    _registry = reg
    return reg


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (a module or an instance with `@hookimpl` methods).

    For plugins that are not installed as packages, and for tests. Returns its name.
    """
    global _registry
    pm = plugin_manager()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    try:
        _register_checked(pm, plugin, name)
    except ValueError as e:
        raise PluginError(f"plugin {name!r}: {e}") from e
    _registry = None
    return name


def unregister_plugin(name: str) -> None:
    global _registry
    plugin_manager().unregister(name=name)
    _registry = None


def reset() -> None:
    """Forget loaded plugins; the next use reloads entry points and reads the environment."""
    global _pm, _registry
    _pm, _registry = None, None
    _load_failures.clear()


def plugin_versions() -> dict[str, str | None]:
    """Plugin name -> version of the distribution that provides it (None if unknown)."""
    out = {}
    for name, plugin in plugin_manager().list_name_plugin():
        dist = None
        module = getattr(plugin, "__name__", type(plugin).__module__).split(".")[0]
        for d in importlib.metadata.packages_distributions().get(module, []):
            dist = d
        out[name] = importlib.metadata.version(dist) if dist else None
    return out


