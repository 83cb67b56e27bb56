"""Plugin loading and the registries of named factories.

Plugins are found through the `sdekit` entry-point group and loaded one at a time: one
that fails to import, names an unknown hook or registers something malformed is reported
by name and skipped, and never takes the others down.
"""

import dataclasses
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from ._errors import PluginError, UnknownNameError
from ._suggest import did_you_mean

KINDS: dict[str, str] = {
    "target": "register_targets",
    "process": "register_processes",
    "score": "register_scores",
    "controller": "register_controllers",
    "sampler": "register_samplers",
    "diagnostic": "register_diagnostics",
}
"""The kinds of part, each mapped to the hook that registers it."""
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
        """Add one name; a name another plugin already registered raises `PluginError`.

        The conflict is remembered either way: asking for the name later raises an error
        that names both plugins, whichever registered it first.
        """
        check_registration(kind, name, factory, plugin)
        existing = self.entries[kind].get(name)
        if existing is not None and existing.plugin == plugin:
            raise PluginError(f"plugin {plugin!r} registers {kind} {name!r} twice; the first is kept")
        if existing is not None:
            owners = self._conflicts.setdefault((kind, name), [existing.plugin])
            if plugin not in owners:
                owners.append(plugin)
            raise PluginError(_conflict_message(kind, name, owners))
        self.entries[kind][name] = Entry(kind, name, factory, plugin)

    def get(self, kind: str, name: str) -> Entry:
        if kind not in KINDS:
            raise UnknownNameError(_unknown("kind", kind, list(KINDS)))
        if not isinstance(name, str):
            raise UnknownNameError(
                f"a {kind} is named by a string, got {type(name).__name__} {name!r}; "
                f"available: {', '.join(self.names(kind)) or 'none'}"
            )
        if (kind, name) in self._conflicts:
            raise PluginError(_conflict_message(kind, name, self._conflicts[(kind, name)]))
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(_unknown(kind, name, list(self.entries[kind]))) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


def check_registration(kind: str, name: Any, factory: Any, plugin: str) -> None:
    """Raise `PluginError` unless `name` is a non-empty string and `factory` a callable
    that is not an abstract class (one with abstract methods or attributes left)."""
    if not isinstance(name, str) or not name.strip():
        raise PluginError(
            f"plugin {plugin!r} registered a {kind} under the invalid name {name!r}; "
            f"names are non-empty strings such as 'my-{kind}'"
        )
    if not callable(factory):
        raise PluginError(
            f"plugin {plugin!r} registered {kind} {name!r} with a {type(factory).__name__} "
            f"({factory!r}); a factory must be callable (a class or a function that builds "
            f"the {kind})"
        )
    missing = _abstract_members(factory)
    if missing:
        raise PluginError(
            f"plugin {plugin!r} registered {kind} {name!r} as the abstract class "
            f"{factory.__name__}, which cannot be built: it does not define "
            f"{', '.join(missing)}. Implement them (see the {kind}'s base class and "
            f"sdekit.testing.check_{kind})"
        )


def _abstract_members(factory: Any) -> list[str]:
    """The abstract methods and `eqx.AbstractVar` attributes a class leaves undefined."""
    if not inspect.isclass(factory):
        return []
    names = set(getattr(factory, "__abstractmethods__", ()))
    names |= set(getattr(factory, "__abstractvars__", ()))
    return sorted(names)


def _conflict_message(kind: str, name: str, plugins: list[str]) -> str:
    names = " and ".join(f"plugin {p!r}" for p in plugins)
    return (
        f"{kind} {name!r} is registered by {'both ' if len(plugins) == 2 else ''}{names}; "
        f"a name must be unique, so rename it in one of them or disable one "
        f"(e.g. SDEKIT_DISABLE_PLUGINS={plugins[-1]})"
    )


def _unknown(kind: str, name: str, known: list[str]) -> str:
    msg = f"unknown {kind} {name!r}.{did_you_mean(name, known, n=3)}"
    return msg + " Available: " + (", ".join(sorted(known)) or "none") + "."


#: Names of the hooks a plugin may implement (those of `sdekit.hookspecs`).
HOOKS: tuple[str, ...] = tuple(
    n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "sdekit_spec")
)

_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_load_failures: list[PluginFailure] = []


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group="sdekit"))


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _report(failure: PluginFailure) -> None:
    warnings.warn(f"sdekit plugin {failure.plugin!r}: {failure.error}", stacklevel=4)


def _check_hooks(pm: pluggy.PluginManager, plugin: object) -> None:
    """Raise `PluginError` for hooks pluggy would silently never call."""
    for hook in HOOKS:  # a hook-named function without the decorator
        attr = getattr(plugin, hook, None)
        if callable(attr) and not hasattr(attr, "sdekit_impl"):
            raise PluginError(
                f"it defines {hook}() without the @sdekit.hookimpl decorator, so sdekit "
                f"would never call it; decorate it with @sdekit.hookimpl"
            )
    for caller in pm.get_hookcallers(plugin) or []:  # what pm.check_pending() reports
        if caller.has_spec():
            continue
        if any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            raise PluginError(
                f"it implements unknown hook {caller.name!r}.{did_you_mean(caller.name, HOOKS)}"
                " The sdekit hooks are: "
                + ", ".join(HOOKS)
            )


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register `plugin` as `name`, or raise `PluginError` (without the name) and leave
    `pm` as it was. A misspelt or undecorated hook is an error, not a silent no-op."""
    if pm.has_plugin(name):
        raise PluginError(
            f"a plugin named {name!r} is already registered; choose another name or "
            f"unregister_plugin({name!r}) first"
        )
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as e:
        raise PluginError(" ".join(str(e).split())) from e
    try:
        _check_hooks(pm, plugin)
    except PluginError:
        pm.unregister(name=name)
        raise


def _collect(impl: Any, kind: str) -> list[tuple[str, Callable[..., Any]]]:
    """Run one plugin's `register_<kind>s` hook; what it registers, checked, or an error."""
    staged: list[tuple[str, Callable[..., Any]]] = []

    def register(name: str, factory: Callable[..., Any]) -> None:
        check_registration(kind, name, factory, impl.plugin_name)
        staged.append((name, factory))

    impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return staged


def _hook_failure(impl: Any, kind: str, e: BaseException) -> PluginFailure:
    hook, plural = KINDS[kind], "processes" if kind == "process" else f"{kind}s"
    detail = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
    return PluginFailure(
        impl.plugin_name, f"{hook}() failed, none of its {plural} are registered: {detail}"
    )


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry-point plugins on first use.

    Each plugin is loaded on its own: one that fails to import or implements an unknown
    hook is reported (a warning naming it, and `registry().failures`) and skipped.
    `SDEKIT_DISABLE_PLUGINS=a,b` skips plugins by name; `SDEKIT_LOAD_PLUGINS=a,b` loads
    only those (an empty value loads none). First-party plugins are named `processes`,
    `targets`, `scores`, `controllers`, `samplers` and `diagnostics`.
    """
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("sdekit")
    pm.add_hookspecs(hookspecs)
    blocked = _env_list("SDEKIT_DISABLE_PLUGINS") or set()
    allowed = _env_list("SDEKIT_LOAD_PLUGINS")
    seen: dict[str, str] = {}  # plugin name -> entry point value
    failures: list[PluginFailure] = []
    for ep in _entry_points():
        if ep.name in seen:
            if ep.value != seen[ep.name]:  # not just the same distribution seen twice
                failures.append(PluginFailure(
                    ep.name,
                    f"not loaded from {ep.value!r}: the plugin name {ep.name!r} is already "
                    f"used by {seen[ep.name]!r}; uninstall one of them",
                ))
            continue
        seen[ep.name] = ep.value
        if ep.name in blocked or (allowed is not None and ep.name not in allowed):
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - any import-time failure
            failures.append(PluginFailure(
                ep.name, f"not loaded: importing {ep.value!r} failed: {type(e).__name__}: {e}"
            ))
            continue
        try:
            _register_checked(pm, plugin, ep.name)
        except PluginError as e:
            failures.append(PluginFailure(ep.name, f"not loaded: {e}"))
    for failure in failures:
        _report(failure)
    _load_failures[:] = failures
    for var, names in (("SDEKIT_DISABLE_PLUGINS", blocked), ("SDEKIT_LOAD_PLUGINS", allowed)):
        unknown = sorted((names or set()) - set(seen))
        if unknown:
            warnings.warn(
                f"{var} names {', '.join(map(repr, unknown))}, which no installed plugin is "
                f"called; installed plugins: {', '.join(sorted(seen)) or 'none'}",
                stacklevel=3,
            )
    _pm = pm
    return pm


def registry() -> Registry:
    """The registries built from every loaded plugin (cached until plugins change).

    A plugin hook that raises or registers something malformed is reported and none of
    what that hook registers is kept; a name two plugins register is reported, and
    asking for it raises an error that names both.
    """
    global _registry
    if _registry is not None:
        return _registry
    pm = plugin_manager()
    reg = Registry()
    reg.failures.extend(_load_failures)
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            try:
                staged = _collect(impl, kind)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the rest
                failure = _hook_failure(impl, kind, e)
                reg.failures.append(failure)
                _report(failure)
                continue
            for name, factory in staged:
                try:
                    reg.add(kind, name, factory, impl.plugin_name)
                except PluginError as e:
                    failure = PluginFailure(impl.plugin_name, str(e))
                    reg.failures.append(failure)
                    _report(failure)
    _registry = reg
    return reg


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (a module, or an object with `@sdekit.hookimpl` methods).

    For plugins that are not installed as packages, and for tests; returns its name.
    The plugin is checked now, and not registered (`PluginError`) if it implements an
    unknown hook, if one of its hooks fails or registers something malformed, or if it
    registers a name another plugin already has.

    ```python
    class MyPlugin:
        @sdekit.hookimpl
        def register_targets(self, register):
            register("my-target", MyTarget)

    sdekit.register_plugin(MyPlugin(), name="my-plugin")
    ```
    """
    global _registry
    current = registry()
    pm = plugin_manager()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    try:
        _register_checked(pm, plugin, name)
    except PluginError as e:
        raise PluginError(f"plugin {name!r} not registered: {e}") from e
    errors: list[str] = []
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                staged = _collect(impl, kind)
            except Exception as e:  # noqa: BLE001
                errors.append(_hook_failure(impl, kind, e).error)
                continue
            for entry_name, _ in staged:
                existing = current.entries[kind].get(entry_name)
                if existing is not None:
                    errors.append(_conflict_message(kind, entry_name, [existing.plugin, name]))
    if errors:
        pm.unregister(name=name)
        raise PluginError(f"plugin {name!r} not registered: " + "; ".join(errors))
    _registry = None
    return name


def unregister_plugin(name: str) -> None:
    """Remove the plugin called `name` (from `register_plugin` or an entry point).

    A name that is not registered is ignored, so teardown code can call it unconditionally.
    """
    global _registry
    plugin_manager().unregister(name=name)
    _registry = None


def reset() -> None:
    """Forget every plugin, those added with `register_plugin` included; the next use
    reloads the entry points and reads `SDEKIT_DISABLE_PLUGINS` / `SDEKIT_LOAD_PLUGINS`."""
    global _pm, _registry
    _pm, _registry = None, None
    _load_failures.clear()


def plugin_versions() -> dict[str, str | None]:
    """Plugin name -> version of the distribution that provides it (None if unknown): that
    of its `sdekit` entry point, else that of the distribution installing its top-level
    module (looked up once: scanning every installed file takes seconds)."""
    from_entry_points = {ep.name: ep.dist.version for ep in _entry_points() if ep.dist}
    out, owners = {}, None
    for name, plugin in plugin_manager().list_name_plugin():
        if name in from_entry_points:
            out[name] = from_entry_points[name]
            continue
        if owners is None:
            owners = importlib.metadata.packages_distributions()
        module = getattr(plugin, "__name__", type(plugin).__module__).split(".")[0]
        dists = owners.get(module, [])
        out[name] = importlib.metadata.version(dists[-1]) if dists else None
    return out


