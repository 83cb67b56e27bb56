"""The `sdekit` command line: click over the Python API, and nothing else.

Each command is a few calls of the public API: `sdekit sample` is `sdekit.resolve_config`
then `sdekit.run`, `sdekit diagnose` is `sdekit.load_run` then `sdekit.diagnose`. A user
mistake is reported as one line, `Error: ...`, on stderr with a non-zero exit status;
`--debug` (or `SDEKIT_DEBUG=1`) shows the full traceback instead.
"""

import importlib.metadata
import inspect
import sys
import traceback
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
import jax

import sdekit

from . import _config, _run, io
from ._distributed import is_writer
from ._errors import SdekitError
from ._info import PLURALS, format_default, format_metric, info_report, parse_kind, plugins_report, run_rows
from ._plugins import KINDS, PARTS
from ._run import RunWarning, _one_line, compose_config, default_directory

__all__ = ["cli", "main"]

_EMPTY = inspect.Parameter.empty


class _Error(click.ClickException):
    """An error shown as exactly one line on stderr."""

    def show(self, file=None) -> None:
        click.echo(f"Error: {_one_line(self.format_message())}", file=file, err=True)


def _translate(e: BaseException, debug: bool) -> BaseException:
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
    if isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e):
        return _Error(f"out of memory: {_one_line(str(e).split('RESOURCE_EXHAUSTED:', 1)[1])}; "
                      f"reduce n, the dimension, steps, batch or draws")
    first = (str(e).strip().splitlines() or [""])[0]
    return _Error(f"unexpected {type(e).__name__}: {first} (this is a bug in sdekit or a "
                  f"plugin; run 'sdekit --debug ...' for the traceback)")


def _warn(message: str) -> None:
    """A one-line warning on stderr."""
    click.echo(f"Warning: {_one_line(message)}", err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    name = "Warning" if category in (UserWarning, RunWarning) else category.__name__
    click.echo(f"{name}: {_one_line(str(message))}", err=True)


class SdekitGroup(click.Group):
    """The `sdekit` group: one-line errors, and commands added by plugins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: command name -> plugin that added it.
        self.plugin_commands: dict[str, str] = {}
        #: plugins whose `register_commands` failed: (plugin, error).
        self.command_failures: list[tuple[str, str]] = []

    def _add_commands_of(self, impl: Any) -> None:
        """Run one plugin's `register_commands(cli)`; undo and report it if it fails or
        would replace or remove a command it does not own."""
        plugin, before = impl.plugin_name, dict(self.commands)
        try:
            impl.function(**({"cli": self} if "cli" in impl.argnames else {}))
            added = {n for n, c in self.commands.items() if before.get(n) is not c}
            taken = sorted(n for n in added if n in before)
            if taken:
                raise sdekit.PluginError(
                    f"it replaces command(s) {', '.join(map(repr, taken))} that it does not own")
            for n in [n for n in before if n not in self.commands]:
                raise sdekit.PluginError(f"it removed command {n!r}")
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the CLI
            self.commands = before
            error = f"register_commands: {type(e).__name__}: {e}"
            self.command_failures.append((plugin, error))
            _warn(f"sdekit plugin {plugin!r}: {error}")
            return
        self.plugin_commands.update({n: plugin for n in added})

    def load_plugin_commands(self) -> None:
        """(Re)run every plugin's `register_commands(cli)`, each guarded on its own."""
        for name in self.plugin_commands:
            self.commands.pop(name, None)
        self.plugin_commands, self.command_failures = {}, []
        for impl in sdekit.plugin_manager().hook.register_commands.get_hookimpls():
            self._add_commands_of(impl)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("always", RunWarning)
            try:
                self.load_plugin_commands()
            except Exception as e:  # noqa: BLE001 - e.g. the plugin manager itself failing
                _warn(f"plugin commands not loaded: {type(e).__name__}: {e}")
            return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            raise _translate(e, debug=False) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - every error leaves as one line
            new = _translate(e, debug=bool(ctx.params.get("debug")))
            if new is e:
                raise
            raise new from None


def _debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


@click.group(name="sdekit", cls=SdekitGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(importlib.metadata.version("sdekit"), "--version", "-V",
                      prog_name="sdekit", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, envvar="SDEKIT_DEBUG",
              help="Show full tracebacks instead of one-line errors (also SDEKIT_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diffusion-based samplers, score models and Fokker-Planck diagnostics on JAX.

    \b
    Examples:
      sdekit sample                       the default job (gmm40, no exact score)
      sdekit list targets
      sdekit show sampler reverse-sde
      sdekit sample funnel --sampler pis --seed 1
      sdekit sample --config runs/gmm40-smc/config.toml --out runs/again

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


def _echo_json(value: Any) -> None:
    click.echo(io.json_dumps(value), nl=False)


def _echo_rows(rows: Iterable[Sequence[str]], indent: str = "") -> None:
    rows = [list(r) for r in rows]
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]
        click.echo((indent + "  ".join(cells)).rstrip())


# --------------------------------------------------------------------------------------
# info, plugins, list, show


def _plugins() -> dict[str, Any]:
    return plugins_report(cli.plugin_commands, cli.command_failures)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json: bool) -> None:
    """Versions, JAX backend and devices, loaded plugins and plugin failures."""
    data = info_report(_plugins())
    if as_json:
        return _echo_json(data)
    rows = [("sdekit", data["sdekit"] or "?"), ("python", data["python"])]
    rows += [(d, v or "not installed") for d, v in data["versions"].items()]
    rows += [("platform", data["platform"]), ("backend", data["backend"]),
             ("devices", ", ".join(data["devices"])),
             ("plugins", ", ".join(f"{n} {v or '(version unknown)'}"
                                   for n, v in data["plugins"].items()) or "none")]
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
    report = _plugins()
    if as_json:
        return _echo_json(report)
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


@cli.command(name="list")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(kind: str | None, as_json: bool) -> None:
    """Registered names of KIND (all kinds if omitted): name, plugin, description.

    KIND is one of targets, processes, scores, controllers, samplers, diagnostics
    (singular works too).
    """
    reg = sdekit.registry()
    kinds = [parse_kind(kind)] if kind else list(KINDS)
    data = {PLURALS[k]: [{"name": n, "plugin": reg.entries[k][n].plugin,
                          "description": reg.entries[k][n].description} for n in reg.names(k)]
            for k in kinds}
    if as_json:
        return _echo_json(data if kind is None else data[PLURALS[kinds[0]]])
    indent = "  " if kind is None else ""
    for k, entries in data.items():
        if kind is None:
            click.echo(f"{k}:")
        if not entries:
            click.echo(f"{indent}(no {k} registered)")
        _echo_rows([(e["name"], e["plugin"], e["description"]) for e in entries], indent)


def _toml_or_none(value: Any) -> Any:
    return None if value is _EMPTY or not io.is_toml_value(value) else value


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(kind: str, name: str, as_json: bool) -> None:
    """The description, parts and options (with defaults) of the KIND registered as NAME.

    KIND is one of targets, processes, scores, controllers, samplers, diagnostics
    (singular works too). Options are set with `sdekit sample --set KIND.OPTION=VALUE`
    or in a [KIND] section of a config file.
    """
    entry = sdekit.registry().get(parse_kind(kind), name)
    params = entry.parameters()
    parts = {p: params[p].default for p in PARTS if p in params}
    options, doc = entry.options(), inspect.getdoc(entry.factory) or ""
    if as_json:
        return _echo_json({
            "kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
            "description": entry.description, "doc": doc,
            "parts": {p: _toml_or_none(d) for p, d in parts.items()},
            "options": {o: _toml_or_none(d) for o, d in options.items()},
            "required": [o for o, d in options.items() if d is _EMPTY]})
    click.echo(f"{entry.kind} {entry.name} (plugin {entry.plugin})")
    if doc:
        click.echo(f"\n{doc}")
    if parts:
        click.echo("\nparts:")
        _echo_rows([(p, "(the target sampled)" if p == "target" else "(required)" if d is _EMPTY
                     else "(none)" if d is None else format_default(d))
                    for p, d in parts.items()], indent="  ")
    click.echo()
    if not options:
        return click.echo("options: none")
    click.echo("options:")
    _echo_rows([(o, format_default(d)) for o, d in options.items()], indent="  ")


# --------------------------------------------------------------------------------------
# sample, diagnose


def _check_bounds(n: int | None, steps: int | None, seed: int | None) -> None:
    for flag, value, low in (("-n", n, 1), ("--steps", steps, 1), ("--seed", seed, 0)):
        if value is not None and value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}", param_hint=f"'{flag}'")
    if seed is not None and seed > _config.MAX_SEED:
        raise click.BadParameter(f"must be <= {_config.MAX_SEED}, got {seed}",
                                 param_hint="'--seed'")


@cli.command()
@click.argument("target", required=False)
@click.option("--sampler", "-s", metavar="NAME", help="Sampler [default: "
              f"{_config.DEFAULTS['sampler']['name']}; the default job's without TARGET].")
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
              help=f"Number of samples [default: {_config.DEFAULTS['n']}].")
@click.option("--seed", type=int, metavar="S",
              help="PRNG seed; decides every random choice of the run [default: 0].")
@click.option("--set", "sets", multiple=True, metavar="SECTION.OPTION=VALUE",
              help="Set an option; SECTION is target, sampler, process, score or controller; "
                   "VALUE is read as TOML (1, 2.5, true, [1, 2]) or else as a string. Repeatable.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              metavar="FILE.toml", help="Start from this configuration; flags override it.")
@click.option("--out", "-o", type=click.Path(), metavar="DIR",
              help="Output directory [default: runs/TARGET-SAMPLER].")
@click.option("--watchdog", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              envvar="SDEKIT_WATCHDOG", help="End the run with an error when compiling, "
              "sampling or one diagnostic takes longer than SECONDS (also SDEKIT_WATCHDOG).")
@click.option("--diagnostic-budget", type=click.FloatRange(min=0), metavar="FACTOR",
              help="Skip each diagnostic whose predicted cost would take the diagnostics "
              "beyond FACTOR times the run's own time (train + compile + sample) "
              "[default: 1; inf: no limit] (also SDEKIT_DIAGNOSTIC_BUDGET).")
@click.option("--dry-run", is_flag=True,
              help="Resolve and compose, print the configuration, write nothing.")
@click.option("--distributed", is_flag=True, envvar="SDEKIT_DISTRIBUTED",
              help="Join a multi-process run (jax.distributed), its processes detected from "
                   "SLURM, Open MPI or Cloud TPU, or given by the next three options "
                   "(also SDEKIT_DISTRIBUTED=1).")
@click.option("--coordinator", metavar="HOST:PORT", envvar="SDEKIT_COORDINATOR",
              help="Process 0's address, with --processes and --process-id: join a "
                   "multi-process run (also SDEKIT_COORDINATOR).")
@click.option("--processes", type=click.IntRange(min=1), metavar="N", envvar="SDEKIT_PROCESSES",
              help="Number of processes of the run (also SDEKIT_PROCESSES).")
@click.option("--process-id", type=click.IntRange(min=0), metavar="I",
              envvar="SDEKIT_PROCESS_ID", help="This process's id, 0 to N-1 (also SDEKIT_PROCESS_ID).")
@click.option("--heartbeat-timeout", type=click.IntRange(min=1), default=100, show_default=True,
              metavar="SECONDS", envvar="SDEKIT_HEARTBEAT_TIMEOUT",
              help="In a multi-process run, end every process when one has been silent this long.")
def sample(target, sampler, process, score, controller, steps, train_iters, batch, resume_dir,
           n, seed, sets, config_path, out, watchdog, diagnostic_budget, dry_run, distributed,
           coordinator, processes, process_id, heartbeat_timeout) -> None:
    """Draw samples from TARGET and write them with metrics and a plot (`sdekit.run`).

    With no TARGET, --sampler or --config: the default job, the 40-mode Gaussian mixture
    gmm40 (log Z = 0 known) by tempered SMC, printing log Z-hat beside the known log Z.

    TARGET is a registered name (sdekit list targets), or user code: path/to/file.py:NAME
    or package.module:NAME (a log-density, with --set target.dim=D; a factory; or an
    AbstractTarget), or numpyro:path/to/file.py:MODEL (a NumPyro model). See docs/numpyro.md.

    \b
    Writes into DIR, each file atomically:
      samples.npz   x (n, d), and log_weights (n,) when the sampler gives them
                    (else the array is absent and has_log_weights is false);
                    for a NumPyro model, also one array per named site
      metrics.json  diagnostics (weights, sample-quality, eubo, sinkhorn, when
                    installed and within --diagnostic-budget), timings,
                    n, n_nonfinite, has_log_weights
      config.toml   the complete configuration, the derived part seeds included:
                    --config DIR/config.toml reproduces the samples bit for bit
      samples.png   the samples against the target
    Nothing is written unless the run succeeds; DIR is created only then. A sampler
    that trains also writes config.toml at the start and checkpoint.eqx during
    training, so that `--resume DIR` continues an interrupted run.

    A part named on the command line that differs from the one in --config drops
    the options the file gave it; --set then applies on top.

    In a multi-process run (--distributed, or --coordinator, --processes and
    --process-id) every process runs this same command; process 0 prints and writes.
    """
    if distributed or coordinator is not None or processes is not None or process_id is not None:
        sdekit.initialize_distributed(coordinator, processes, process_id,
                                      heartbeat_timeout=heartbeat_timeout)
    _check_bounds(n, steps, seed)
    if resume_dir is not None:
        if config_path is not None or (out is not None and Path(out) != Path(resume_dir)):
            raise click.UsageError("--resume DIR takes its configuration and output from DIR")
        config_path, out = str(Path(resume_dir) / "config.toml"), resume_dir
    for flag, value in (("train_iters", train_iters), ("batch", batch)):
        sets = (*sets, f"sampler.{flag}={value}") if value is not None else sets
    config = None if config_path is None else sdekit.load_config(config_path)
    cfg = sdekit.resolve_config(
        config, target=target, sampler=sampler, process=process, score=score,
        controller=controller, steps=steps, n=n, seed=seed, sets=sets,
        source=str(config_path or "config"))
    out_dir = Path(out) if out else default_directory(cfg)
    if dry_run:
        compose_config(cfg)  # every check that composing makes, and nothing written
        return click.echo(io.toml_dumps(cfg), nl=False)
    io.check_writable_dir(out_dir)
    writer = is_writer()
    if writer:
        click.echo(f"sampling {cfg['n']} points from {cfg['target']['name']} with "
                   f"{cfg['sampler']['name']} (seed {cfg['seed']})...", err=True)
    result = sdekit.run(cfg, out=out_dir, progress=writer, resume=resume_dir is not None,
                        strict=_debugging(), watchdog=watchdog,
                        diagnostic_budget=diagnostic_budget)
    if not writer:
        return
    _echo_rows(run_rows(result))
    click.echo(f"wrote {out_dir}/ ({', '.join(p for p in _run.OUTPUT_FILES if (out_dir / p).exists())})")


@cli.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--diagnostic", "-d", "names", multiple=True, metavar="NAME",
              help="A registered diagnostic; repeatable [default: "
                   f"{', '.join(_run.DEFAULT_DIAGNOSTICS)}].")
@click.option("--set", "sets", multiple=True, metavar="NAME.OPTION=VALUE",
              help="Set an option of diagnostic NAME; VALUE is read as TOML. Repeatable.")
def diagnose(run_dir, names, sets) -> None:
    """Run diagnostics on the finished `sdekit sample` run in DIR (`sdekit.diagnose`).

    \b
    Recomposes the run from DIR/config.toml (the trained sampler from checkpoint.eqx),
    reads DIR/samples.npz, and writes into DIR, atomically:
      diagnostics.json  {NAME: {metric: value}} for each diagnostic, and "errors"
                        {NAME: message} for those that failed (exit status 1)
      NAME.png          for each diagnostic that draws a figure of its results
    The keys are those of `sdekit sample`'s metrics (same seed, same values).
    """
    names = tuple(dict.fromkeys(names)) or _run.default_diagnostics()
    for name in names:
        sdekit.registry().get("diagnostic", name)  # an unknown name fails before any work
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for text in sets:
        name, option, value = sdekit.parse_set(text, names)
        options[name][option] = value
    run = sdekit.load_run(run_dir)
    results = sdekit.diagnose(run, options, strict=_debugging())
    for name in names:
        if name in results:
            _echo_rows([(f"{name}.{k}", format_metric(v)) for k, v in results[name].items()]
                       or [(name, "(does not apply to this run)")])
    pngs = [f"{n}.png" for n in results if (Path(run_dir) / f"{n}.png").exists()]
    click.echo(f"wrote {Path(run_dir) / 'diagnostics.json'}" + "".join(f", {p}" for p in pngs))
    if "errors" in results:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
