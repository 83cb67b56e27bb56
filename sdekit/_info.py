"""What the commands report, as data and as text: versions, devices, plugins, failures,
kinds by their plural names, option defaults and a run's metrics."""

import importlib.metadata
import inspect
import math
import platform
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from . import io
from ._errors import UnknownNameError
from ._plugins import KINDS, plugin_versions, registry
from ._run import RUN_KEYS, Run
from ._suggest import did_you_mean

__all__ = ["format_default", "format_metric", "info_report", "parse_kind", "plugins_report",
           "run_rows"]

#: The plural names the command line accepts for each kind (the singular works too).
PLURALS = {"target": "targets", "process": "processes", "score": "scores",
           "controller": "controllers", "sampler": "samplers", "diagnostic": "diagnostics"}
_EMPTY = inspect.Parameter.empty


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def plugins_report(commands: Mapping[str, str] = {},
                   command_failures: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """`{"plugins": {NAME: {"version", "names": {kind: [...]}, "commands"}}, "failures":
    [{"plugin", "error"}]}`; `commands` maps each plugin command to its plugin, and
    `command_failures` lists the plugins whose commands could not be added."""
    reg = registry()
    plugins: dict[str, Any] = {}
    for name, version in plugin_versions().items():
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


def parse_kind(text: str) -> str:
    """A kind from its singular or plural name, case-insensitively."""
    t = text.strip().lower()
    for kind, plural in PLURALS.items():
        if t in (kind, plural):
            return kind
    known = list(PLURALS.values())
    raise UnknownNameError(f"unknown kind {text!r}.{did_you_mean(t, known)} Available: "
                           f"{', '.join(known)}.")


def format_metric(v: Any) -> str:
    """A metric as text: 6 significant digits, `nan` for a missing value, lists cut at 8."""
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(format_metric(u) for u in v[:8]) + (", ...]" if len(v) > 8 else "]")
    return str(v)


def format_default(value: Any) -> str:
    """An option's default as `sdekit show` prints it: in TOML where it is a TOML value."""
    if value is _EMPTY:
        return "(required)"
    if value is not None and io.is_toml_value(value):
        return io.toml_dumps({"v": value})[4:].strip()
    return repr(value)


def run_rows(result: Run) -> list[tuple[str, str]]:
    """`(name, value)` rows of a run's timings and measured metrics; log Z-hat is shown
    beside the known log Z where the target has one."""
    m = result.metrics
    rows = [("time", f"{m['sample_seconds']:.3g} s sampling, {m['compile_seconds']:.3g} s "
                     f"compiling" + (f", {m['train_seconds']:.3g} s training"
                                     if m["train_seconds"] else ""))]
    for k, v in m.items():
        if k not in RUN_KEYS:
            rows.append((k, format_metric(v)))
            if k == "log_Z" and result.target is not None and result.target.log_Z is not None:
                rows[-1] = (k, f"{rows[-1][1]}  (known log Z: {float(result.target.log_Z):.6g})")
    if m.get("diagnostics_skipped"):
        rows.append(("skipped", f"{', '.join(m['diagnostics_skipped'])} (they would overrun the "
                                f"diagnostics' time budget; sdekit diagnose computes them)"))
    return rows
