"""What `sdekit info` and `sdekit plugins` report: versions, devices, plugins, failures."""

import importlib.metadata
import platform
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from ._plugins import KINDS, plugin_versions, registry

__all__ = ["info_report", "plugins_report"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugin_versions() -> dict[str, str | None]:
    """`plugin_versions()`, completed from the distributions of the `sdekit` entry points
    (editable installs do not map modules to distributions)."""
    versions = plugin_versions()
    for ep in importlib.metadata.entry_points(group="sdekit"):
        if versions.get(ep.name, "") is None and ep.dist is not None:
            versions[ep.name] = ep.dist.version
    return versions


def plugins_report(commands: Mapping[str, str] = {},
                   command_failures: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """`{"plugins": {NAME: {"version", "names": {kind: [...]}, "commands"}}, "failures":
    [{"plugin", "error"}]}`; `commands` maps each plugin command to its plugin, and
    `command_failures` lists the plugins whose commands could not be added."""
    reg = registry()
    plugins: dict[str, Any] = {}
    for name, version in _plugin_versions().items():
        names = {kind: sorted(n for n, e in reg.entries[kind].items() if e.plugin == name)
                 for kind in KINDS}
        plugins[name] = {
            "version": version,
            "names": {k: v for k, v in names.items() if v},
            "commands": sorted(c for c, p in commands.items() if p == name),
        }
    failures = [{"plugin": f.plugin, "error": f.error} for f in reg.failures]
    failures += [{"plugin": p, "error": e} for p, e in command_failures]
    return {"plugins": plugins, "failures": failures}


def info_report(plugins: Mapping[str, Any]) -> dict[str, Any]:
    """Versions of sdekit, Python and the numerical stack, the JAX backend and devices,
    and the plugins and failures of `plugins` (a `plugins_report`)."""
    return {
        "sdekit": _version("sdekit"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "equinox", "diffrax", "numpy")},
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()],
        "plugins": {n: p["version"] for n, p in plugins["plugins"].items()},
        "failures": plugins["failures"],
    }
