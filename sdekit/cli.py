"""The `sdekit` command line: a thin click layer over the Python API.

Every command does what a few lines of Python with the same names would do
(`sdekit.registry()`, `sdekit.compose(...)`, `sampler.sample(key, n)`, the diagnostics).
A user mistake is reported as one line, `Error: ...`, on stderr with a non-zero exit
status; `--debug` (or `SDEKIT_DEBUG=1`) shows the full traceback instead.
"""

import contextlib
import difflib
import importlib.metadata
import inspect
import io
import logging
import math
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sdekit

from . import _io
from . import _target_spec
from ._log_density import npz_arrays
from ._errors import SdekitError, UnknownNameError
from ._plugins import KINDS, PARTS, plugin_versions

__all__ = [
    "ConfigError", "RunError", "cli", "compose_config", "main", "parse_set", "plot_png",
    "resolve_config", "run_sample",
]

#: Sections of a configuration file, in the order they are written.
SECTIONS = ("target", "sampler", "process", "score", "controller")
#: Every top-level key of a configuration file.
TOP_LEVEL = ("seed", "n", *SECTIONS)
#: What `sdekit sample` uses for what neither the command line nor `--config` gives.
DEFAULT_TARGET = "gmm40"
DEFAULT_SAMPLER = "reverse-sde"
DEFAULT_N = 10_000
DEFAULT_SEED = 0
#: Diagnostics `sdekit sample` runs after sampling, those that are registered.
DEFAULT_DIAGNOSTICS = ("weights", "sample-quality")
#: PRNG seeds are 32-bit: larger ones would alias smaller ones.
MAX_SEED = 2**32 - 1

#: The plural names the command line accepts for each kind (the singular works too).
PLURALS = {
    "target": "targets",
    "process": "processes",
    "score": "scores",
    "controller": "controllers",
    "sampler": "samplers",
    "diagnostic": "diagnostics",
}

_EMPTY = inspect.Parameter.empty


class ConfigError(SdekitError):
    """A configuration (file, `--set` or flags) that cannot describe a run."""


# --------------------------------------------------------------------------------------
# errors as one line


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Error(click.ClickException):
    """An error shown as exactly one line on stderr."""

    def show(self, file=None) -> None:
        click.echo(f"Error: {_one_line(self.format_message())}", file=file, err=True)


def _translate(e: BaseException, ctx: click.Context | None, debug: bool) -> BaseException:
    """The exception to raise in place of `e`: one line unless debugging."""
    if isinstance(e, (click.exceptions.Exit, click.Abort)):
        return e
    if isinstance(e, click.ClickException):
        if debug:
            return e
        msg = e.format_message()
        if isinstance(e, click.UsageError) and e.ctx is not None:
            msg = f"{_one_line(msg)} (see '{e.ctx.command_path} --help')"
        err = _Error(msg)
        err.exit_code = e.exit_code
        return err
    if debug:
        traceback.print_exception(e, file=sys.stderr)
        return click.exceptions.Exit(1)
    if isinstance(e, (SdekitError, ValueError, OSError)):
        return _Error(str(e) or type(e).__name__)
    first = (str(e).strip().splitlines() or [""])[0]
    return _Error(
        f"unexpected {type(e).__name__}: {first} (this is a bug in sdekit or a plugin; "
        f"run 'sdekit --debug ...' for the traceback)"
    )


def _warn(message: str) -> None:
    """A one-line warning on stderr (every time, unlike `warnings.warn`)."""
    click.echo(f"Warning: {_one_line(message)}", err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    name = "Warning" if category is UserWarning else category.__name__
    click.echo(f"{name}: {_one_line(str(message))}", err=True)


class SdekitGroup(click.Group):
    """The `sdekit` group: one-line errors, and commands added by plugins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: command name -> plugin that added it.
        self.plugin_commands: dict[str, str] = {}
        #: plugins whose `register_commands` failed: (plugin, error).
        self.command_failures: list[tuple[str, str]] = []

    def load_plugin_commands(self) -> None:
        """(Re)run every plugin's `register_commands(cli)`, each guarded on its own.

        A plugin that raises, or that would replace a command it does not own, is
        reported and its commands are left out; the others are unaffected.
        """
        for name in self.plugin_commands:
            self.commands.pop(name, None)
        self.plugin_commands = {}
        self.command_failures = []
        for impl in sdekit.plugin_manager().hook.register_commands.get_hookimpls():
            plugin = impl.plugin_name
            before = dict(self.commands)
            try:
                impl.function(**({"cli": self} if "cli" in impl.argnames else {}))
                added = {n for n, c in self.commands.items() if before.get(n) is not c}
                taken = sorted(n for n in added if n in before)
                if taken:
                    raise sdekit.PluginError(
                        f"it replaces command(s) {', '.join(map(repr, taken))} that it does not own"
                    )
                for n in [n for n in before if n not in self.commands]:
                    raise sdekit.PluginError(f"it removed command {n!r}")
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the CLI
                self.commands = before
                error = f"register_commands: {type(e).__name__}: {e}"
                self.command_failures.append((plugin, error))
                _warn(f"sdekit plugin {plugin!r}: {error}")
                continue
            for n in added:
                self.plugin_commands[n] = plugin

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                self.load_plugin_commands()
            except Exception as e:  # noqa: BLE001 - e.g. the plugin manager itself failing
                _warn(f"plugin commands not loaded: {type(e).__name__}: {e}")
            return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            raise _translate(e, ctx, debug=False) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - every error leaves as one line
            new = _translate(e, ctx, debug=bool(ctx.params.get("debug")))
            if new is e:
                raise
            raise new from None


# --------------------------------------------------------------------------------------
# the group


@click.group(
    name="sdekit",
    cls=SdekitGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    importlib.metadata.version("sdekit"), "--version", "-V", prog_name="sdekit",
    message="%(prog)s %(version)s",
)
@click.option(
    "--debug", is_flag=True, envvar="SDEKIT_DEBUG",
    help="Show full tracebacks instead of one-line errors (also SDEKIT_DEBUG=1).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diffusion-based samplers, score models and Fokker-Planck diagnostics on JAX.

    \b
    Examples:
      sdekit list targets
      sdekit show sampler reverse-sde
      sdekit sample gmm40 --sampler reverse-sde --steps 200 -n 5000
      sdekit sample --config runs/gmm40-reverse-sde/config.toml --out runs/again

    Plugins add targets, processes, scores, controllers, samplers, diagnostics and
    commands; `sdekit plugins` lists them.
    """
    if debug:
        jax.config.update("jax_traceback_filtering", "off")
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def main(argv: Sequence[str] | None = None) -> None:
    """The `sdekit` console script."""
    cli.main(args=argv, prog_name="sdekit")


# --------------------------------------------------------------------------------------
# info, plugins, list, show


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


def _failures() -> list[dict[str, str]]:
    out = [{"plugin": f.plugin, "error": f.error} for f in sdekit.registry().failures]
    out += [{"plugin": p, "error": e} for p, e in cli.command_failures]
    return out


def _plugins_report() -> dict[str, Any]:
    reg = sdekit.registry()
    versions = _plugin_versions()
    plugins: dict[str, Any] = {}
    for name in versions:
        names = {
            kind: sorted(n for n, e in reg.entries[kind].items() if e.plugin == name)
            for kind in KINDS
        }
        plugins[name] = {
            "version": versions[name],
            "names": {k: v for k, v in names.items() if v},
            "commands": sorted(c for c, p in cli.plugin_commands.items() if p == name),
        }
    return {"plugins": plugins, "failures": _failures()}


def _echo_json(value: Any) -> None:
    click.echo(_io.json_dumps(value), nl=False)


def _echo_rows(rows: Iterable[Sequence[str]], indent: str = "") -> None:
    rows = [list(r) for r in rows]
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]
        click.echo((indent + "  ".join(cells)).rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json: bool) -> None:
    """Versions, JAX backend and devices, loaded plugins and plugin failures."""
    report = _plugins_report()
    data = {
        "sdekit": _version("sdekit"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "equinox", "diffrax", "numpy")},
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()],
        "plugins": {n: p["version"] for n, p in report["plugins"].items()},
        "failures": report["failures"],
    }
    if as_json:
        _echo_json(data)
        return
    rows = [("sdekit", data["sdekit"] or "?"), ("python", data["python"])]
    rows += [(d, v or "not installed") for d, v in data["versions"].items()]
    rows += [
        ("platform", data["platform"]),
        ("backend", data["backend"]),
        ("devices", ", ".join(data["devices"])),
        ("plugins", ", ".join(f"{n} {v or '(version unknown)'}" for n, v in data["plugins"].items())
         or "none"),
    ]
    _echo_rows(rows)
    if data["failures"]:
        click.echo("failures")
        _echo_rows([(f["plugin"], f["error"]) for f in data["failures"]], indent="  ")
    else:
        _echo_rows([("failures", "none")])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """Loaded plugins, their versions and what each registers; and plugins that failed."""
    report = _plugins_report()
    if as_json:
        _echo_json(report)
        return
    for name, p in report["plugins"].items():
        click.echo(f"{name} {p['version'] or '(version unknown)'}")
        rows = [(PLURALS[k], ", ".join(v)) for k, v in p["names"].items()]
        if p["commands"]:
            rows.append(("commands", ", ".join(p["commands"])))
        _echo_rows(rows or [("(registers nothing)", "")], indent="  ")
    if not report["plugins"]:
        click.echo("no plugins loaded")
    if report["failures"]:
        click.echo("failures:")
        _echo_rows([(f["plugin"], f["error"]) for f in report["failures"]], indent="  ")


def _kind(text: str) -> str:
    """A kind from its singular or plural name, case-insensitively."""
    t = text.strip().lower()
    for kind, plural in PLURALS.items():
        if t in (kind, plural):
            return kind
    known = list(PLURALS.values())
    msg = f"unknown kind {text!r}."
    close = difflib.get_close_matches(t, known + list(PLURALS), n=1, cutoff=0.5)
    if close:
        msg += f" Did you mean {PLURALS.get(close[0], close[0])!r}?"
    raise UnknownNameError(msg + " Available: " + ", ".join(known) + ".")


@cli.command(name="list")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(kind: str | None, as_json: bool) -> None:
    """Registered names of KIND (all kinds if omitted): name, plugin, description.

    KIND is one of targets, processes, scores, controllers, samplers, diagnostics
    (singular works too).
    """
    reg = sdekit.registry()
    kinds = [_kind(kind)] if kind else list(KINDS)
    data = {
        PLURALS[k]: [
            {"name": n, "plugin": reg.entries[k][n].plugin,
             "description": reg.entries[k][n].description}
            for n in reg.names(k)
        ]
        for k in kinds
    }
    if as_json:
        _echo_json(data if kind is None else data[PLURALS[kinds[0]]])
        return
    for k, entries in data.items():
        if kind is None:
            click.echo(f"{k}:")
        if not entries:
            click.echo(("  " if kind is None else "") + f"(no {k} registered)")
        _echo_rows(
            [(e["name"], e["plugin"], e["description"]) for e in entries],
            indent="  " if kind is None else "",
        )


def _format_default(value: Any) -> str:
    if value is _EMPTY:
        return "(required)"
    if value is not None and _io.is_toml_value(value):
        return _io.toml_dumps({"v": value})[4:].strip()
    return repr(value)


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(kind: str, name: str, as_json: bool) -> None:
    """The description and options (with defaults) of the KIND registered as NAME.

    KIND is one of targets, processes, scores, controllers, samplers, diagnostics
    (singular works too). Options are set with `sdekit sample --set KIND.OPTION=VALUE`
    or in a [KIND] section of a config file.
    """
    entry = sdekit.registry().get(_kind(kind), name)
    params = entry.parameters()
    parts = {p: params[p].default for p in PARTS if p in params}
    options = entry.options()
    doc = inspect.getdoc(entry.factory) or ""
    if as_json:
        _echo_json({
            "kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
            "description": entry.description, "doc": doc,
            "parts": {p: (None if d is _EMPTY or not _io.is_toml_value(d) else d)
                      for p, d in parts.items()},
            "options": {o: (None if d is _EMPTY or not _io.is_toml_value(d) else d)
                        for o, d in options.items()},
            "required": [o for o, d in options.items() if d is _EMPTY],
        })
        return
    click.echo(f"{entry.kind} {entry.name} (plugin {entry.plugin})")
    if doc:
        click.echo()
        click.echo(doc)
    if parts:
        click.echo()
        click.echo("parts:")
        _echo_rows(
            [(p, "(the target sampled)" if p == "target" else "(required)" if d is _EMPTY
              else "(none)" if d is None else _format_default(d)) for p, d in parts.items()],
            indent="  ",
        )
    click.echo()
    if options:
        click.echo("options:")
        _echo_rows([(o, _format_default(d)) for o, d in options.items()], indent="  ")
    else:
        click.echo("options: none")


# --------------------------------------------------------------------------------------
# configuration


def _section(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"{where} must be a name or a table, got {type(value).__name__} {value!r}")


def parse_set(text: str, sections: Sequence[str] = SECTIONS) -> tuple[str, str, Any]:
    """`"section.option=value"` -> `(section, option, value)`; the value read as TOML."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"--set expects SECTION.OPTION=VALUE, got {text!r}")
    section, dot, option = key.partition(".")
    if not dot or section not in sections or not option:
        raise ConfigError(
            f"--set key {key!r} must be SECTION.OPTION with SECTION one of "
            f"{', '.join(sections)} (e.g. --set {sections[-1]}.OPTION=VALUE)"
        )
    if option == "name":
        raise ConfigError(f"--set {key}: choose the {section} with "
                          f"{'the TARGET argument' if section == 'target' else '--' + section}")
    if not raw.strip():
        raise ConfigError(f"--set {key}= needs a value")
    return section, option, _io.parse_toml_value(raw.strip())


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of the option's default; ints become floats where
    the default is a float, lists become tuples where it is a tuple."""
    if default is _EMPTY or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, float) and isinstance(value, int):
            return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    elif isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _complete(entry: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    """`section` checked against `entry`'s options, with every serialisable default filled in."""
    kind, name = entry.kind, entry.name
    params = entry.parameters()
    options = entry.options()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in section.items() if k != "name"}
    for key in given:
        if key in PARTS:
            raise ConfigError(
                f"{kind}.{key} is not an option: the {key} is its own part "
                f"([{key}] section or --{key})"
            )
        if key not in options and not takes_any:
            raise ConfigError(
                f"unknown option {kind}.{key} for {kind} {name!r}; its options are: "
                f"{', '.join(options) or 'none'}"
            )
    out: dict[str, Any] = {"name": name}
    for key, default in options.items():
        if key in given:
            out[key] = _coerce(f"{kind}.{key}", given[key], default)
        elif default is _EMPTY:
            raise ConfigError(
                f"{kind} {name!r} needs option {key!r}: give it with --set {kind}.{key}=VALUE "
                f"or in the [{kind}] section"
            )
        elif default is not None and _io.is_toml_value(default):
            out[key] = default
    for key in given:
        out.setdefault(key, given[key])
    return out


def _check_int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be an integer {bounds}, got {value!r}")
    return value


def resolve_config(
    config: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
    sampler: str | None = None,
    process: str | None = None,
    score: str | None = None,
    controller: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    sets: Iterable[str] = (),
    source: str = "config",
) -> dict[str, Any]:
    """The complete configuration of a run, as TOML-ready data.

    Starts from `config` (a loaded `config.toml`), then applies the names, `steps`, `n`,
    `seed` and `sets` (`"section.option=value"`) given. A part renamed here drops the
    options `config` gave for its old name. Every option is then checked against the
    registry and every default filled in (those that are `None` or not TOML values are
    left out: the factory's default applies). Parts appear only where the sampler's
    factory takes them. Raises `ConfigError` / `UnknownNameError` naming the bad key.

    The result is `{"seed", "n", "target": {"name", ...}, "sampler": {...},
    "process": {...}, "score": {...}, "controller": {...}}`; pass its sections to
    `sdekit.compose`, as `run_sample` does.
    """
    reg = sdekit.registry()
    cfg: dict[str, Any] = {}
    if config is not None:
        unknown = [k for k in config if k not in TOP_LEVEL]
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {', '.join(map(repr, unknown))}; valid keys: "
                f"{', '.join(TOP_LEVEL)}"
            )
        for key, value in config.items():
            cfg[key] = _section(value, f"{source}: [{key}]") if key in SECTIONS else value
    names = {"target": target, "sampler": sampler, "process": process, "score": score,
             "controller": controller}
    for kind, name in names.items():
        if name is not None and cfg.get(kind, {}).get("name") != name:
            cfg[kind] = {"name": name}
    if seed is not None:
        cfg["seed"] = seed
    if n is not None:
        cfg["n"] = n
    cfg.setdefault("seed", DEFAULT_SEED)
    cfg.setdefault("n", DEFAULT_N)
    _check_int("seed", cfg["seed"], 0, MAX_SEED)
    _check_int("n", cfg["n"], 1)
    for kind, default in (("target", DEFAULT_TARGET), ("sampler", DEFAULT_SAMPLER)):
        cfg.setdefault(kind, {}).setdefault("name", default)
    for kind in SECTIONS:
        if kind in cfg and not isinstance(cfg[kind].get("name", ""), str):
            raise ConfigError(f"{kind}.name must be a string, got {cfg[kind]['name']!r}")

    sampler_entry = reg.get("sampler", cfg["sampler"]["name"])
    if steps is not None:
        _check_int("--steps", steps, 1)
        if "steps" not in sampler_entry.options():
            raise ConfigError(
                f"--steps: sampler {sampler_entry.name!r} has no 'steps' option; its options "
                f"are: {', '.join(sampler_entry.options()) or 'none'}"
            )
        cfg["sampler"]["steps"] = steps
    for text in sets:
        section, option, value = parse_set(text)
        cfg.setdefault(section, {})[option] = value

    params = sampler_entry.parameters()
    takes = [p for p in PARTS if p in params]
    out: dict[str, Any] = {"seed": cfg["seed"], "n": cfg["n"]}
    parts: dict[str, Any] = {}
    for kind in PARTS:
        section = cfg.get(kind)
        if kind not in params:
            if section is not None:
                raise ConfigError(
                    f"sampler {sampler_entry.name!r} does not take a {kind} (it takes: "
                    f"{', '.join(takes) or 'none'}); remove the {kind} setting"
                )
            continue
        section = dict(section or {})
        if "name" not in section:
            default = params[kind].default
            if isinstance(default, Mapping) and isinstance(default.get("name"), str):
                section = {**default, **section}
            elif isinstance(default, str):
                section["name"] = default
            elif default is _EMPTY:
                raise ConfigError(
                    f"sampler {sampler_entry.name!r} needs a {kind}: give --{kind} NAME"
                )
            elif section:
                raise ConfigError(
                    f"{kind} options given but no {kind} name: give --{kind} NAME"
                )
            else:
                continue  # no default to write down: the factory's own default applies
        entry = (_target_spec.target_entry(section["name"]) if kind == "target"
                 else reg.get(kind, section["name"]))  # a target may be a spec (file.py:NAME)
        parts[kind] = _complete(entry, section)
    out["target"] = parts.pop("target")
    out["sampler"] = _complete(sampler_entry, cfg["sampler"])
    out.update(parts)
    return out


def compose_config(cfg: Mapping[str, Any]) -> sdekit.AbstractSampler:
    """`sdekit.compose` applied to a configuration from `resolve_config`."""
    return sdekit.compose(
        _target_spec.build_target(cfg["target"]), dict(cfg["sampler"]),
        **{k: dict(cfg[k]) for k in ("process", "score", "controller") if k in cfg},
    )


# --------------------------------------------------------------------------------------
# sampling


def _draw(sampler: sdekit.AbstractSampler, key: jax.Array, n: int) -> sdekit.Samples:
    return sampler.sample(key, n)


def _run_target(sampler: sdekit.AbstractSampler, cfg: Mapping[str, Any]) -> sdekit.AbstractTarget:
    """The sampler's target, or the configuration's where the sampler holds none."""
    target = getattr(sampler, "target", None)
    if isinstance(target, sdekit.AbstractTarget):
        return target
    return sdekit.resolve_target(cfg["target"]["name"],
                                 **{k: v for k, v in cfg["target"].items() if k != "name"})


def run_sample(cfg: Mapping[str, Any], sampler: sdekit.AbstractSampler | None = None,
               diagnostics: Sequence[str] | None = None, checkpoint: Path | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Compose, train, sample and diagnose the run `cfg` describes.

    A trainable sampler (`sdekit.AbstractTrainable`, e.g. `pis`) is first trained by
    `sdekit.train` with key `jax.random.fold_in(key, 2)`, checkpointing to (and resuming
    from) `checkpoint`, the only file written. Samples with `sampler.sample(jax.random.PRNGKey(seed), n)` (jitted; compilation is
    timed apart), then runs each registered diagnostic of `diagnostics` (default:
    `DEFAULT_DIAGNOSTICS`) with key `jax.random.fold_in(key, 1)`. A diagnostic that fails
    is reported in `metrics["diagnostic_errors"]` instead of losing the samples.

    Returns `{"sampler", "target", "samples", "metrics", "key"}`.
    """
    if sampler is None:
        sampler = compose_config(cfg)
    target = _run_target(sampler, cfg)
    n, key = cfg["n"], jax.random.PRNGKey(cfg["seed"])
    train_seconds = 0.0
    if isinstance(sampler, sdekit.AbstractTrainable):
        sampler, history = sdekit.train(
            sampler, jax.random.fold_in(key, 2), checkpoint=checkpoint, progress=progress
        )
        train_seconds = float(history["train_seconds"])

    t0 = time.perf_counter()
    compiled = eqx.filter_jit(_draw).lower(sampler, key, n).compile()
    t1 = time.perf_counter()
    with _runtime_errors("sampling"):
        samples = jax.block_until_ready(compiled(sampler, key, n))
    t2 = time.perf_counter()
    if not isinstance(samples, sdekit.Samples):
        raise sdekit.PluginError(
            f"sampler {cfg['sampler']['name']!r} returned {type(samples).__name__}, not Samples"
        )
    x = np.asarray(samples.x)
    if x.ndim != 2 or x.shape[0] != n:
        raise sdekit.PluginError(
            f"sampler {cfg['sampler']['name']!r} returned x of shape {x.shape}, expected ({n}, d)"
        )
    metrics: dict[str, Any] = {
        "n": n,
        "dim": int(x.shape[1]),
        "seed": cfg["seed"],
        "n_nonfinite": int(np.sum(~np.all(np.isfinite(x), axis=1))),
        "has_log_weights": samples.log_weights is not None,
        "train_seconds": train_seconds,
        "compile_seconds": t1 - t0,
        "sample_seconds": t2 - t1,
    }

    reg = sdekit.registry()
    dkey = jax.random.fold_in(key, 1)
    errors: dict[str, str] = {}
    t3 = time.perf_counter()
    for name in DEFAULT_DIAGNOSTICS if diagnostics is None else diagnostics:
        if name not in reg.entries["diagnostic"]:
            continue
        try:
            diagnostic = sdekit.create("diagnostic", name)
            values = diagnostic(dkey, target=target, sampler=sampler, samples=samples)
            values = jax.block_until_ready(dict(values))
        except Exception as e:  # noqa: BLE001 - keep the samples; report the diagnostic
            if _debugging():
                raise
            errors[name] = f"{type(e).__name__}: {_one_line(str(e))}"
            _warn(f"diagnostic {name!r} failed: {errors[name]}")
            continue
        for k, v in values.items():
            metrics[k if k not in metrics else f"{name}.{k}"] = _io.json_safe(v)
    metrics["diagnostic_seconds"] = time.perf_counter() - t3
    if errors:
        metrics["diagnostic_errors"] = errors
    return {"sampler": sampler, "target": target, "samples": samples, "metrics": metrics,
            "key": key}


class RunError(SdekitError):
    """A check inside a compiled sampler failed at run time (`equinox.error_if`)."""


class _HideCallbackFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "jax.pure_callback failed"


@contextlib.contextmanager
def _runtime_errors(what: str):
    """Turn an `equinox.error_if` failure inside compiled code into a one-line `RunError`.

    (`equinox.filter_jit` does this for a direct call; an ahead-of-time compiled call,
    used here to time compilation apart, gets the raw XLA error and a logged traceback.)
    """
    logger = logging.getLogger("jax._src.callback")
    hide = _HideCallbackFailure()
    if not _debugging():
        logger.addFilter(hide)
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "_EquinoxRuntimeError: " not in text or _debugging():
            raise
        msg = text.split("_EquinoxRuntimeError: ", 1)[1].split("\n\n", 1)[0].strip()
        raise RunError(f"{what} failed: {msg}") from None
    finally:
        logger.removeFilter(hide)


def _debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _finite_range(*arrays: np.ndarray, pad: float = 0.1) -> tuple[float, float]:
    values = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None])
    if values.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return float(lo - pad * span), float(hi + pad * span)


def plot_png(target: sdekit.AbstractTarget, x: np.ndarray, key: jax.Array,
             title: str = "") -> bytes:
    """A PNG of samples `x` (n, d) against `target`.

    d <= 2: the samples over the target's (log-)density; d > 2: histograms of the first
    four marginals, with exact samples overlaid where the target has them.
    """
    from matplotlib.figure import Figure

    d = x.shape[1]
    finite = x[np.all(np.isfinite(x), axis=1)]
    exact = None
    if target.has_exact_samples:
        try:
            exact = np.asarray(target.sample(jax.random.fold_in(key, 2), min(len(x), 5000)))
        except Exception:  # noqa: BLE001 - the plot is still useful without them
            exact = None
    log_prob = jax.jit(jax.vmap(target.log_prob))
    if d <= 2:
        fig = Figure(figsize=(6, 5.5 if d == 2 else 4), layout="constrained")
        ax = fig.add_subplot()
        if d == 1:
            lo, hi = _finite_range(finite[:, 0], None if exact is None else exact[:, 0])
            grid = np.linspace(lo, hi, 400)
            lp = np.asarray(log_prob(jnp.asarray(grid[:, None])), dtype=float)
            dens = np.exp(lp - np.nanmax(np.where(np.isfinite(lp), lp, -np.inf)))
            dens = np.where(np.isfinite(dens), dens, 0.0)
            dens /= max(np.trapezoid(dens, grid), 1e-300)
            ax.hist(finite[:, 0], bins=80, range=(lo, hi), density=True, alpha=0.6,
                    label="samples")
            ax.plot(grid, dens, color="k", lw=1.2, label="target")
            ax.set_xlabel("x[0]")
            ax.legend()
        else:
            xlo, xhi = _finite_range(finite[:, 0], None if exact is None else exact[:, 0])
            ylo, yhi = _finite_range(finite[:, 1], None if exact is None else exact[:, 1])
            gx, gy = np.meshgrid(np.linspace(xlo, xhi, 200), np.linspace(ylo, yhi, 200))
            pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
            lp = np.asarray(log_prob(pts), dtype=float).reshape(gx.shape)
            top = np.nanmax(np.where(np.isfinite(lp), lp, -np.inf))
            if np.isfinite(top):
                ax.contourf(gx, gy, np.clip(lp, top - 25, top), levels=12, cmap="Blues")
            show = finite[:: max(1, len(finite) // 5000)]
            ax.scatter(show[:, 0], show[:, 1], s=2, alpha=0.4, color="C1", label="samples")
            ax.set_xlim(xlo, xhi)
            ax.set_ylim(ylo, yhi)
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
    else:
        k = min(d, 4)
        fig = Figure(figsize=(3.2 * k, 3.2), layout="constrained")
        for i in range(k):
            ax = fig.add_subplot(1, k, i + 1)
            lo, hi = _finite_range(finite[:, i], None if exact is None else exact[:, i])
            ax.hist(finite[:, i], bins=60, range=(lo, hi), density=True, alpha=0.6,
                    label="samples")
            if exact is not None:
                ax.hist(exact[:, i], bins=60, range=(lo, hi), density=True, histtype="step",
                        color="k", label="exact")
            ax.set_xlabel(f"x[{i}]")
            if i == 0:
                ax.legend()
    if title:
        fig.suptitle(title)
    return _figure_png(fig)


OUTPUT_FILES = ("samples.npz", "metrics.json", "samples.png", "config.toml")


@cli.command()
@click.argument("target", required=False)
@click.option("--sampler", "-s", metavar="NAME", help=f"Sampler [default: {DEFAULT_SAMPLER}].")
@click.option("--process", metavar="NAME", help="Process [default: the sampler's].")
@click.option("--score", metavar="NAME", help="Score [default: the sampler's].")
@click.option("--controller", metavar="NAME", help="Controller [default: the sampler's].")
@click.option("--steps", type=int, metavar="K", help="Set sampler.steps (K >= 1).")
@click.option("--train-iters", type=int, metavar="N",
              help="Set sampler.train_iters, for samplers that train.")
@click.option("--batch", type=int, metavar="B", help="Set sampler.batch, for samplers that train.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              metavar="DIR", help="Continue the interrupted training run in DIR (its "
                                  "config.toml and checkpoint.eqx).")
@click.option("-n", "--num", "n", type=int, metavar="N",
              help=f"Number of samples [default: {DEFAULT_N}].")
@click.option("--seed", type=int, metavar="S", help=f"PRNG seed [default: {DEFAULT_SEED}].")
@click.option("--set", "sets", multiple=True, metavar="SECTION.OPTION=VALUE",
              help="Set an option; SECTION is target, sampler, process, score or controller; "
                   "VALUE is read as TOML (1, 2.5, true, [1, 2]) or else as a string. Repeatable.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              metavar="FILE.toml", help="Start from this configuration; flags override it.")
@click.option("--out", "-o", type=click.Path(), metavar="DIR",
              help="Output directory [default: runs/TARGET-SAMPLER].")
@click.option("--dry-run", is_flag=True,
              help="Resolve and compose, print the configuration, write nothing.")
def sample(target, sampler, process, score, controller, steps, train_iters, batch, resume_dir,
           n, seed, sets, config_path, out, dry_run) -> None:
    """Draw samples from TARGET [default: gmm40] and write them with metrics and a plot.

    TARGET is a registered name (sdekit list targets), or user code: path/to/file.py:NAME
    or package.module:NAME (a log-density, with --set target.dim=D; a factory; or an
    AbstractTarget), or numpyro:path/to/file.py:MODEL (a NumPyro model). See docs/numpyro.md.

    \b
    Writes into DIR, each file atomically:
      samples.npz   x (n, d), and log_weights (n,) when the sampler gives them
                    (else the array is absent and has_log_weights is false);
                    for a NumPyro model, also one array per named site
      metrics.json  diagnostics (weights, sample-quality, when installed), timings,
                    n, n_nonfinite, has_log_weights
      config.toml   the complete configuration: --config DIR/config.toml reproduces
                    the samples bit for bit
      samples.png   the samples against the target
    Nothing is written unless the run succeeds; DIR is created only then. A sampler
    that trains also writes config.toml at the start and checkpoint.eqx during
    training, so that `--resume DIR` continues an interrupted run.

    A part named on the command line that differs from the one in --config drops
    the options the file gave it; --set then applies on top.
    """
    for flag, value, low in (("-n", n, 1), ("--steps", steps, 1), ("--seed", seed, 0)):
        if value is not None and value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}", param_hint=f"'{flag}'")
    if seed is not None and seed > MAX_SEED:
        raise click.BadParameter(f"must be <= {MAX_SEED}, got {seed}", param_hint="'--seed'")
    if resume_dir is not None:
        if config_path is not None or (out is not None and Path(out) != Path(resume_dir)):
            raise click.UsageError("--resume DIR takes its configuration and output from DIR")
        config_path, out = str(Path(resume_dir) / "config.toml"), resume_dir
        if not Path(config_path).exists():
            raise ConfigError(f"--resume: {config_path} does not exist; is {resume_dir} a run?")
    for flag, value in (("--train-iters", train_iters), ("--batch", batch)):
        if value is not None:
            sets = (*sets, f"sampler.{flag[2:].replace('-', '_')}={value}")
    config = None
    if config_path is not None:
        try:
            config = _io.load_toml(config_path)
        except ValueError as e:  # tomllib.TOMLDecodeError
            raise ConfigError(f"{config_path}: not valid TOML: {e}") from e
    cfg = resolve_config(
        config, target=target, sampler=sampler, process=process, score=score,
        controller=controller, steps=steps, n=n, seed=seed, sets=sets,
        source=str(config_path or "config"),
    )
    toml_text = _io.toml_dumps(cfg)
    out_dir = Path(out or f"runs/{_target_spec.short_name(cfg['target']['name'])}-"
                          f"{cfg['sampler']['name']}")
    if not dry_run:
        _io.check_writable_dir(out_dir)
    composed = compose_config(cfg)
    if dry_run:
        click.echo(toml_text, nl=False)
        return

    click.echo(
        f"sampling {cfg['n']} points from {cfg['target']['name']} with "
        f"{cfg['sampler']['name']} (seed {cfg['seed']})...", err=True,
    )
    checkpoint = None
    if isinstance(composed, sdekit.AbstractTrainable):
        checkpoint = out_dir / "checkpoint.eqx"
        if resume_dir is None:
            _write_files(out_dir, {"config.toml": toml_text, "checkpoint.eqx": None})
    result = run_sample(cfg, composed, checkpoint=checkpoint, progress=True)
    samples, metrics = result["samples"], result["metrics"]
    x = np.asarray(samples.x)
    if metrics["n_nonfinite"]:
        _warn(f"{metrics['n_nonfinite']} of {cfg['n']} samples are not finite "
              f"(kept in samples.npz, counted in metrics.json)")
    arrays = npz_arrays(samples, result["target"])  # x, log_weights, named sites
    try:
        png = plot_png(result["target"], x, result["key"],
                       title=f"{cfg['target']['name']}, {cfg['sampler']['name']}, n={cfg['n']}")
    except Exception as e:  # noqa: BLE001 - the samples matter more than the picture
        if _debugging():
            raise
        _warn(f"samples.png not drawn: {type(e).__name__}: {e}")
        png = None
    files = {
        "samples.npz": _io.npz_bytes(**arrays),
        "metrics.json": _io.json_dumps(metrics),
        "samples.png": png,
        "config.toml": toml_text,
    }
    _write_files(out_dir, files)

    rows = [("time", f"{metrics['sample_seconds']:.3g} s sampling, "
                     f"{metrics['compile_seconds']:.3g} s compiling")]
    skip = {"n", "dim", "seed", "has_log_weights", "train_seconds", "compile_seconds",
            "sample_seconds", "diagnostic_seconds", "diagnostic_errors"}
    for k, v in metrics.items():
        if k not in skip:
            rows.append((k, _format_metric(v)))
    _echo_rows(rows)
    click.echo(f"wrote {out_dir}/ ({', '.join(n for n, d in files.items() if d is not None)})")


def _write_files(out_dir: Path, files: Mapping[str, bytes | str | None]) -> None:
    """Write each file atomically into `out_dir`, creating it; `None` removes a stale file.

    If the directory is new and a write fails, it is removed again with what was written.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, data in files.items():
            if data is None:
                (out_dir / name).unlink(missing_ok=True)  # never a stale one beside new data
            else:
                _io.atomic_write(out_dir / name, data)
                written.append(out_dir / name)
    except BaseException:
        if created:
            for path in written:
                path.unlink(missing_ok=True)
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise


# --------------------------------------------------------------------------------------
# diagnostics of a finished run


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The finished `sdekit sample` run in `run_dir`: its configuration, sampler (trained,
    from `checkpoint.eqx`, where it trains), target and samples.

    Returns `{"cfg", "sampler", "target", "samples"}`; raises `ConfigError` naming what
    is missing or incomplete.
    """
    run_dir = Path(run_dir)
    for name in ("config.toml", "samples.npz"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir / name} does not exist; is {run_dir} a finished "
                              f"`sdekit sample` run?")
    path = run_dir / "config.toml"
    try:
        config = _io.load_toml(path)
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    cfg = resolve_config(config, source=str(path))
    sampler = compose_config(cfg)
    if isinstance(sampler, sdekit.AbstractTrainable):
        checkpoint = run_dir / "checkpoint.eqx"
        if not checkpoint.is_file():
            raise ConfigError(f"{checkpoint} does not exist: the trained sampler is lost")
        sampler, step = sdekit.load_checkpoint(sampler, checkpoint)
        if step < sampler.train_options.steps:
            raise ConfigError(
                f"{checkpoint} holds {step} of {sampler.train_options.steps} training steps; "
                f"finish the run first (sdekit sample --resume {run_dir})"
            )
    arrays = _io.load_npz(run_dir / "samples.npz")
    samples = sdekit.Samples(jnp.asarray(arrays["x"]), (
        jnp.asarray(arrays["log_weights"]) if "log_weights" in arrays else None
    ))
    return {"cfg": cfg, "sampler": sampler, "target": _run_target(sampler, cfg), "samples": samples}


def _figure_png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


@cli.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--diagnostic", "-d", "names", multiple=True, metavar="NAME",
              help=f"A registered diagnostic; repeatable [default: {', '.join(DEFAULT_DIAGNOSTICS)}].")
@click.option("--set", "sets", multiple=True, metavar="NAME.OPTION=VALUE",
              help="Set an option of diagnostic NAME; VALUE is read as TOML. Repeatable.")
def diagnose(run_dir, names, sets) -> None:
    """Run diagnostics on the finished `sdekit sample` run in DIR.

    \b
    Recomposes the run from DIR/config.toml (the trained sampler from checkpoint.eqx),
    reads DIR/samples.npz, and writes into DIR, atomically:
      diagnostics.json  {NAME: {metric: value}} for each diagnostic, and "errors"
                        {NAME: message} for those that failed (exit status 1)
      NAME.png          for each diagnostic that draws a figure of its results
    The keys are those of `sdekit sample`'s metrics (same seed, same values).
    """
    reg = sdekit.registry()
    if names:
        names = tuple(dict.fromkeys(names))
        for name in names:
            reg.get("diagnostic", name)  # an unknown name fails before any work
    else:
        names = tuple(n for n in DEFAULT_DIAGNOSTICS if n in reg.names("diagnostic"))
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for text in sets:
        name, option, value = parse_set(text, names)
        options[name][option] = value
    diagnostics = {name: sdekit.create("diagnostic", name, **options[name]) for name in names}
    run = load_run(run_dir)
    key = jax.random.fold_in(jax.random.PRNGKey(run["cfg"]["seed"]), 1)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    files: dict[str, bytes | str | None] = {}
    for name, diagnostic in diagnostics.items():
        try:
            values = jax.block_until_ready(dict(diagnostic(
                key, target=run["target"], sampler=run["sampler"], samples=run["samples"]
            )))
            fig = diagnostic.plot(values)
            files[f"{name}.png"] = None if fig is None else _figure_png(fig)
        except Exception as e:  # noqa: BLE001 - keep the other diagnostics' results
            if _debugging():
                raise
            errors[name] = f"{type(e).__name__}: {_one_line(str(e))}"
            _warn(f"diagnostic {name!r} failed: {errors[name]}")
            continue
        results[name] = {k: _io.json_safe(v) for k, v in values.items()}
        _echo_rows([(f"{name}.{k}", _format_metric(v)) for k, v in results[name].items()]
                   or [(name, "(does not apply to this run)")])
    if errors:
        results["errors"] = errors
    _write_files(Path(run_dir), {"diagnostics.json": _io.json_dumps(results), **files})
    click.echo(f"wrote {Path(run_dir) / 'diagnostics.json'}"
               + "".join(f", {n}" for n, d in files.items() if d is not None))
    if errors:
        raise SystemExit(1)


def _format_metric(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_format_metric(u) for u in v[:8]) + (", ...]" if len(v) > 8 else "]")
    return str(v)


if __name__ == "__main__":
    main()
