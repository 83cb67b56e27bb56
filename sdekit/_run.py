"""One run: compose, train, sample, diagnose, write and plot; and a finished run, loaded.

`sdekit.run(config)` is what `sdekit sample` does, and `sdekit.load_run(directory)` is what
`sdekit diagnose` starts from:

```python
run = sdekit.run({"target": "funnel", "sampler": "pis", "seed": 1}, out="runs/funnel-pis")
run.metrics["log_Z"], run.samples.x.shape
again = sdekit.load_run("runs/funnel-pis")  # the trained sampler, from its checkpoint
```
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from . import io
from ._compose import compose, create, resolve_part
from ._config import ConfigError, check_section, load_config, resolve_config
from ._diagnostic import AbstractDiagnostic
from ._distributed import gather, is_writer, process_0s
from ._errors import PluginError, SdekitError
from ._log_density import npz_arrays
from .metrics import MAX_PARETO_K, MIN_ESS
from ._plot import figure_png, plot_png
from ._plugins import registry
from ._sampler import AbstractDiffusionSampler, AbstractSampler, Samples
from ._target import AbstractTarget, _fmt, float32_hint
from ._target_spec import short_name
from ._train import AbstractTrainable, load_checkpoint, train

__all__ = ["Run", "RunError", "RunFailed", "RunWarning", "compose_config", "diagnose", "load_run",
           "run"]

#: The files a finished run directory holds.
OUTPUT_FILES = ("samples.npz", "metrics.json", "samples.png", "config.toml")
#: Diagnostics a run computes after sampling, those that are registered.
#: Cheapest first: a time budget that runs out skips the most expensive.
DEFAULT_DIAGNOSTICS = ("weights", "sample-quality", "eubo", "sinkhorn")
#: Diagnostics may take this multiple of the run's own time (train + compile + sample) by
#: default (`SDEKIT_DIAGNOSTIC_BUDGET` overrides it): one whose cost would overrun it is skipped.
DIAGNOSTIC_BUDGET = 1.0
#: Keys of `Run.metrics` that describe the run rather than measure the samples.
RUN_KEYS = ("status", "error", "warnings", "n", "dim", "seed", "has_log_weights",
            "train_seconds", "compile_seconds", "sample_seconds", "diagnostic_seconds",
            "diagnostic_errors", "diagnostics_skipped")
#: A run fails (`RunFailed`) when more than this fraction of its samples (a sample with any
#: non-finite coordinate), or of its log-weights, is not finite.
MAX_NONFINITE_FRACTION = 0.5


class RunError(SdekitError):
    """A check inside a compiled sampler failed at run time (`equinox.error_if`)."""


class RunFailed(SdekitError):
    """A run that produced nothing usable: more than `MAX_NONFINITE_FRACTION` of its samples
    or of its log-weights are not finite. The message names the likely cause and what to
    try; `run` is the `Run` (samples included, `metrics["status"] == "failed"`). Its
    directory holds `metrics.json` (`"status": "failed"`, `"error"`) and `config.toml`, and
    no `samples.npz` or `samples.png`."""

    def __init__(self, message: str, run: "Run"):
        super().__init__(message)
        self.run = run


class RunWarning(UserWarning):
    """Something a run reports and goes on from: a diagnostic that failed, samples that
    are not finite, a picture not drawn."""


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run, from `sdekit.run` or `sdekit.load_run`.

    **Fields:**

    - `config`: the complete configuration (`sdekit.resolve_config`); written as
      `config.toml`, it reproduces the run bit for bit.
    - `sampler`: the composed sampler, trained where it trains.
    - `target`: the target sampled (`None` for a run that learns from data, such as
      `sdekit train-score`'s).
    - `samples`: the `Samples` drawn (`x`, and `log_weights` where the sampler gives them).
    - `metrics`: what `metrics.json` holds: `status` (`"ok"`, or `"failed"` with `error`
      on a `RunFailed`), `n`, `dim`, `seed`, `n_nonfinite`,
      `has_log_weights`, timings, and the diagnostics' values (e.g. `log_Z`, `ess`).
    - `directory`: where the run's files are, or `None` for a run not written.
    """

    config: dict[str, Any]
    sampler: AbstractSampler
    target: AbstractTarget | None
    samples: Samples
    metrics: dict[str, Any]
    directory: Path | None = None

    @property
    def key(self) -> PRNGKeyArray:
        """The run's key, `jax.random.PRNGKey(seed)`: samples are drawn with it, training
        uses `fold_in(key, 2)` and diagnostics `fold_in(key, 1)`."""
        return jax.random.PRNGKey(self.config["seed"])


def compose_config(cfg: Mapping[str, Any]) -> tuple[AbstractSampler, AbstractTarget]:
    """The sampler and the target of a configuration from `sdekit.resolve_config`: the
    target built first (`sdekit.resolve_part`), then `sdekit.compose` on it."""
    target = resolve_part("target", dict(cfg["target"]))
    parts = {k: dict(cfg[k]) for k in ("process", "score", "controller") if k in cfg}
    return compose(target, dict(cfg["sampler"]), **parts), target


def default_directory(cfg: Mapping[str, Any]) -> Path:
    """`runs/TARGET-SAMPLER`, the directory `sdekit sample` writes to by default."""
    return Path(f"runs/{short_name(cfg['target']['name'])}-{cfg['sampler']['name']}")


@dataclasses.dataclass(frozen=True)
class _Phases:
    """The phases of a run (train, compile, sample, diagnose): each shown on stderr with
    its duration and rate when `progress`, and, with a `watchdog` of S seconds, one that
    makes no progress for S seconds (training: one chunk of steps, compilation included in
    the first; any other phase: the whole phase) ends the process (exit status 3) with a
    one-line error. A compiled program that hangs cannot be interrupted from Python, so
    ending the process is the only way out."""

    progress: bool = False
    watchdog: float | None = None

    @contextlib.contextmanager
    def __call__(self, name: str, unit: str | None = None):
        t0 = time.perf_counter()
        if self.progress:
            print(f"{name}...", file=sys.stderr, flush=True)
        phase = _Phase(name, self.watchdog, t0)
        try:
            yield phase
        finally:
            phase.stop()
        if self.progress:
            rate = phase.rate()
            shown = f", {rate:.4g} {unit}/s" if unit and rate else ""
            print(f"{name}: {time.perf_counter() - t0:.3g} s{shown}", file=sys.stderr, flush=True)


class _Phase:
    """A running phase: `advance(done)` records `done` units (steps, samples) and restarts
    the watchdog's clock."""

    def __init__(self, name: str, watchdog: float | None, start: float):
        self.name, self.watchdog, self._timer = name, watchdog, None
        self._beats = [(start, 0)]
        self._restart()

    def advance(self, done: int) -> None:
        self._beats.append((time.perf_counter(), done))
        self._restart()

    def rate(self) -> float | None:
        """Units per second: between the first and the last advance (compilation, which
        comes before the first, excluded), or from the start with a single advance."""
        first = self._beats[1] if len(self._beats) > 2 else self._beats[0]
        (t_a, a), (t_b, b) = first, self._beats[-1]
        return (b - a) / (t_b - t_a) if b > a and t_b > t_a else None

    def _restart(self) -> None:
        self.stop()
        if self.watchdog is not None:
            self._timer = threading.Timer(self.watchdog, _expired, (self.name, self.watchdog))
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _expired(name: str, seconds: float) -> None:
    # on a line of its own, after a progress bar's unfinished line
    print(f"\nError: the {name} phase made no progress for {seconds:g} s (the watchdog "
          f"limit): stopped. If it only needs longer, raise --watchdog; if the process sat at "
          f"0% CPU, see 'A run that hangs' in docs/performance.md", file=sys.stderr, flush=True)
    os._exit(3)


class _HideCallbackFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "jax.pure_callback failed"


@contextlib.contextmanager
def _runtime_errors(what: str, strict: bool):
    """Turn an `equinox.error_if` failure inside compiled code into a one-line `RunError`
    (`strict`: leave it as it is). `equinox.filter_jit` does this for a direct call; an
    ahead-of-time compiled call, used to time compilation apart, gets the raw XLA error
    and a logged traceback."""
    logger = logging.getLogger("jax._src.callback")
    hide = _HideCallbackFailure()
    if not strict:
        logger.addFilter(hide)
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "_EquinoxRuntimeError: " not in text or strict:
            raise
        msg = text.split("_EquinoxRuntimeError: ", 1)[1].split("\n\n", 1)[0].strip()
        raise RunError(f"{what} failed: {msg}") from None
    finally:
        logger.removeFilter(hide)


def _draw(sampler: AbstractSampler, key: PRNGKeyArray, n: int) -> tuple[Samples, dict]:
    return sampler.sample_with_stats(key, n)


def _draw_samples(sampler: AbstractSampler, key: PRNGKeyArray, n: int) -> tuple[Samples, dict]:
    return sampler.sample(key, n), {}


def _compiled(sampler: AbstractSampler, key: PRNGKeyArray, n: int):
    """`sample_with_stats` compiled; `sample` alone (no statistics) for a sampler whose
    statistics are computed on the host (`float()` of an array) and cannot be traced."""
    try:
        return eqx.filter_jit(_draw).lower(sampler, key, n).compile()
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return eqx.filter_jit(_draw_samples).lower(sampler, key, n).compile()


def _check_samples(samples: Any, n: int, name: str) -> np.ndarray:
    if not isinstance(samples, Samples):
        raise PluginError(f"sampler {name!r} returned {type(samples).__name__}, not Samples")
    x = np.asarray(samples.x)
    if x.ndim != 2 or x.shape[0] != n:
        raise PluginError(f"sampler {name!r} returned x of shape {x.shape}, expected ({n}, d)")
    return x


def _sample(sampler: AbstractSampler, cfg: Mapping[str, Any], strict: bool,
            phases: _Phases = _Phases()) -> tuple[Samples, dict[str, Any]]:
    """Draw `cfg["n"]` samples (jitted; compilation timed apart) and the run's metrics,
    the sampler's statistics (`sample_with_stats`) included."""
    n, key = cfg["n"], jax.random.PRNGKey(cfg["seed"])
    t0 = time.perf_counter()
    with phases("compile"):
        compiled = _compiled(sampler, key, n)
    t1 = time.perf_counter()
    with _runtime_errors("sampling", strict), phases("sample", "samples") as phase:
        samples, stats = gather(jax.block_until_ready(compiled(sampler, key, n)))
        phase.advance(n)
    t2 = time.perf_counter()
    x = _check_samples(samples, n, cfg["sampler"]["name"])
    return samples, {
        "n": n, "dim": int(x.shape[1]), "seed": cfg["seed"],
        "n_nonfinite": int(np.sum(~np.all(np.isfinite(x), axis=1))),
        "has_log_weights": samples.log_weights is not None,
        "compile_seconds": t1 - t0, "sample_seconds": t2 - t1,
        **{(f"sampler.{k}" if k in RUN_KEYS or k == "n_nonfinite" else k): io.json_safe(v)
           for k, v in stats.items()},
    }


def _scale_hint(sampler: AbstractSampler) -> str:
    if not isinstance(sampler, AbstractDiffusionSampler):
        return ""
    p = sampler.process
    scale = max(float(p.reference_std(p.t_min)), float(p.reference_std(p.t_max)))
    return f" (this process's reference std is {scale:.3g})"


def _diverged(sampler: AbstractSampler, bad: int, n: int) -> str:
    trains = ("training diverged (lower --set sampler.learning_rate), "
              if isinstance(sampler, AbstractTrainable) else "")
    return (f"{bad} of {n} samples are not finite: the sampler diverged. Likely causes: "
            f"{trains}a reference scale far from the target's{_scale_hint(sampler)}, too few "
            f"steps for the drift, or float32 overflow. Try more steps (--steps), a process "
            f"scale near the target's (--set process.sigma=...), or JAX_ENABLE_X64=1")


def _bad_weights(target: AbstractTarget, x: np.ndarray, bad: int, n: int) -> str:
    """Why log-weights are not finite: the target's log-density at the samples, or not."""
    rows = np.flatnonzero(np.all(np.isfinite(x), axis=1))
    values = np.asarray(jax.vmap(target.log_prob)(jnp.asarray(x[rows])))
    off = np.flatnonzero(~np.isfinite(values))
    head = f"{bad} of {n} log-weights are not finite"
    if len(off) == 0:
        return (f"{head}, though the target's log-density is finite at the samples: the "
                f"sampler's path weights overflowed. Try more steps (--steps), a process scale "
                f"near the target's, or JAX_ENABLE_X64=1")
    points = x[rows[off]]
    return (f"{head}: the target's log-density is {values[off[0]]} at {len(off)} of the "
            f"samples, e.g. x = {_fmt(points[0])}{float32_hint(target, points[:8])}")


def _failure(sampler: AbstractSampler, target: AbstractTarget, samples: Samples) -> str | None:
    """Why the run produced nothing usable, or `None` (see `MAX_NONFINITE_FRACTION`)."""
    x = np.asarray(samples.x)
    n, bad_x = x.shape[0], int(np.sum(~np.all(np.isfinite(x), axis=1)))
    if bad_x > MAX_NONFINITE_FRACTION * n:
        return _diverged(sampler, bad_x, n)
    if samples.log_weights is None:
        return None
    bad_w = int(np.sum(~np.isfinite(np.asarray(samples.log_weights))))
    if bad_w > MAX_NONFINITE_FRACTION * n:
        return _bad_weights(target, x, bad_w, n)
    return None


def _fail(result: "Run", message: str) -> None:
    """Mark `result` failed, in its metrics and directory (no samples written), and raise."""
    result.metrics.update(status="failed", error=message)
    where = ""
    if result.directory is not None and is_writer():
        io.write_files(result.directory, {
            "metrics.json": io.json_dumps(result.metrics), "samples.npz": None,
            "samples.png": None, "config.toml": io.toml_dumps(result.config)})
        where = f" ({result.directory / 'metrics.json'} marks the run failed)"
    raise RunFailed(f"run failed: {message}{where}", result)


def _untrusted(metrics: Mapping[str, Any]) -> list[str]:
    """Why the run's weighted estimates (`log_Z`, weighted means) are not to be trusted:
    an `ess` or `min_ess` below `sdekit.metrics.MIN_ESS`, a `pareto_k` above
    `sdekit.metrics.MAX_PARETO_K`."""
    found, n = [], metrics["n"]
    for key, what in (("ess", "effective sample size"),
                      ("min_ess", "smallest effective sample size over the importance steps")):
        value = metrics.get(key)
        if isinstance(value, float) and value < MIN_ESS:
            found.append(f"{key} = {value:.3g} < {MIN_ESS}: the {what} is about "
                         f"{value * n:.3g} of {n} samples")
    k = metrics.get("pareto_k")
    if isinstance(k, float) and k > MAX_PARETO_K:
        found.append(f"pareto_k = {k:.2f} > {MAX_PARETO_K}: a few samples dominate the weights")
    return [f"{w}; log_Z and weighted estimates are not to be trusted" for w in found]


def _warn_untrusted(metrics: dict[str, Any]) -> None:
    """Each reason of `_untrusted` as a `RunWarning` and a line of `metrics["warnings"]`."""
    untrusted = _untrusted(metrics)
    if untrusted:
        metrics["warnings"] = untrusted
    for warning in untrusted:
        warnings.warn(warning, RunWarning, stacklevel=3)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_line(e: BaseException) -> str:
    """`e` as `TYPE: message` on one line."""
    return f"{type(e).__name__}: {_one_line(str(e))}"


def _evaluate(diagnostics: Mapping[str, AbstractDiagnostic], key: PRNGKeyArray, target,
              sampler, samples, *, draw: bool, strict: bool, phases: _Phases = _Phases()
              ) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, bytes | None]]:
    """Each diagnostic's values (JSON-safe), errors by name, and figures where `draw`.

    A diagnostic that raises is reported (a `RunWarning` and an entry in the errors)
    and the others go on; with `strict` its exception propagates.
    """
    values: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    figures: dict[str, bytes | None] = {}
    for name, diagnostic in diagnostics.items():
        try:
            with phases(f"diagnose {name}"):
                found = jax.block_until_ready(dict(diagnostic(
                    key, target=target, sampler=sampler, samples=samples)))
            if draw:
                fig = diagnostic.plot(found)
                figures[name] = None if fig is None else figure_png(fig)
        except Exception as e:  # noqa: BLE001 - keep the samples and the other results
            if strict:
                raise
            errors[name] = _error_line(e)
            warnings.warn(f"diagnostic {name!r} failed: {errors[name]}", RunWarning, stacklevel=2)
            continue
        values[name] = {k: io.json_safe(v) for k, v in found.items()}
    return values, errors, figures


def default_diagnostics() -> tuple[str, ...]:
    """`DEFAULT_DIAGNOSTICS`, those registered."""
    registered = registry().names("diagnostic")
    return tuple(n for n in DEFAULT_DIAGNOSTICS if n in registered)


def _budget_factor(factor: float | None) -> float:
    if factor is None:
        text = os.environ.get("SDEKIT_DIAGNOSTIC_BUDGET")
        if text is None:
            return DIAGNOSTIC_BUDGET
        try:
            factor = float(text)
        except ValueError:
            raise ConfigError(f"SDEKIT_DIAGNOSTIC_BUDGET={text!r} is not a number; expected a "
                              f"factor >= 0, or inf for no budget") from None
    if not factor >= 0:
        raise ConfigError(f"diagnostic_budget={factor!r}: expected a factor >= 0 (inf: no budget)")
    return factor


def _cost(name: str, diagnostic: AbstractDiagnostic, run_seconds: Mapping[str, float],
          target, sampler, samples, strict: bool) -> float:
    """`diagnostic.cost(...)`, checked: one that fails or is not a number >= 0 is said
    (a `RunWarning`; raised with `strict`) and taken as 0."""
    try:
        cost = float(diagnostic.cost(run_seconds, target=target, sampler=sampler,
                                     samples=samples))
        if not cost >= 0:
            raise ValueError(f"expected seconds >= 0, got {cost!r}")
    except Exception as e:  # noqa: BLE001 - a broken cost should not lose the run
        if strict:
            raise
        warnings.warn(f"diagnostic {name!r}: its cost failed ({_error_line(e)}); it is run "
                      f"as if its cost were 0", RunWarning, stacklevel=3)
        return 0.0
    return cost


def _run_diagnostics(names: Sequence[str] | None, sampler, target, samples,
                     cfg: Mapping[str, Any], metrics: dict[str, Any], strict: bool,
                     budget: float, phases: _Phases = _Phases()) -> None:
    """Add the values of the registered diagnostics among `names` to `metrics`; a value
    whose name is taken is prefixed with its diagnostic's (`NAME.key`). A diagnostic whose
    `cost` does not fit in what is left of `budget` seconds is skipped and listed in
    `metrics["diagnostics_skipped"]`."""
    registered = registry().entries["diagnostic"]
    chosen = {n: create("diagnostic", n) for n in
              (default_diagnostics() if names is None else names) if n in registered}
    key = jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 1)
    run_seconds = {k: metrics[k] for k in ("train_seconds", "compile_seconds", "sample_seconds")}
    t0 = time.perf_counter()
    values, errors, skipped = {}, {}, []
    for name, diagnostic in chosen.items():
        if math.isfinite(budget):
            spent = time.perf_counter() - t0
            cost = _cost(name, diagnostic, run_seconds, target, sampler, samples, strict)
            if process_0s(budget <= 0 or spent + cost > budget):  # may be collective
                skipped.append(name)
                continue
        found, failed, _ = _evaluate({name: diagnostic}, key, target, sampler, samples,
                                     draw=False, strict=strict, phases=phases)
        values.update(found)
        errors.update(failed)
    for name, found in values.items():
        for k, v in found.items():
            metrics[k if k not in metrics and k not in RUN_KEYS else f"{name}.{k}"] = v
    metrics["diagnostic_seconds"] = time.perf_counter() - t0
    if errors:
        metrics["diagnostic_errors"] = errors
    if skipped:
        metrics["diagnostics_skipped"] = skipped


def _train(sampler: AbstractSampler, cfg: Mapping[str, Any], out: Path | None, resume: bool,
           phases: _Phases) -> tuple[AbstractSampler, float]:
    """Train a trainable sampler, checkpointing into `out` (after writing `config.toml`
    there, unless resuming); `(sampler, 0.0)` for one that does not train."""
    if not isinstance(sampler, AbstractTrainable):
        return sampler, 0.0
    checkpoint = None
    if out is not None:
        checkpoint = out / "checkpoint.eqx"
        if not resume and is_writer():
            io.write_files(out, {"config.toml": io.toml_dumps(cfg), "checkpoint.eqx": None})
    key = jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 2)
    with phases("train", "steps") as phase:
        trained, history = train(sampler, key, checkpoint=checkpoint, progress=phases.progress,
                                 callback=phase.advance)
    return trained, float(history["train_seconds"])


def _png(run_: Run, strict: bool) -> bytes | None:
    cfg = run_.config
    title = f"{cfg['target']['name']}, {cfg['sampler']['name']}, n={cfg['n']}"
    try:
        return plot_png(run_.target, run_.samples.x, run_.key, title=title)
    except Exception as e:  # noqa: BLE001 - the samples matter more than the picture
        if strict:
            raise
        warnings.warn(f"samples.png not drawn: {type(e).__name__}: {e}", RunWarning, stacklevel=2)
        return None


def _write(run_: Run, strict: bool) -> None:
    """The run's files, each atomically; `metrics.json` marks a finished run, so it is
    removed first and written last: a process killed in between leaves a directory that
    `load_run` refuses, never old metrics beside new samples."""
    assert run_.directory is not None
    (run_.directory / "metrics.json").unlink(missing_ok=True)
    io.write_files(run_.directory, {
        "samples.npz": io.npz_bytes(**npz_arrays(run_.samples, run_.target)),
        "samples.png": _png(run_, strict),
        "config.toml": io.toml_dumps(run_.config),
        "metrics.json": io.json_dumps(run_.metrics),
    })


def _config_of(config: Mapping[str, Any] | str | Path | None, out: Path | None,
               resume: bool) -> dict[str, Any]:
    if config is None and resume and out is not None:
        config = out / "config.toml"
    if isinstance(config, (str, Path)):
        return resolve_config(load_config(config), source=str(config))
    return resolve_config(config)


def run(
    config: Mapping[str, Any] | str | Path | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = False,
    resume: bool = False,
    diagnostics: Sequence[str] | None = None,
    strict: bool = False,
    watchdog: float | None = None,
    diagnostic_budget: float | None = None,
) -> Run:
    """Compose, train, sample, diagnose and (with `out`) write the run `config` describes.

    `config` is a configuration (partial is fine: `sdekit.resolve_config` completes it),
    or the path of a `config.toml`. A trainable sampler (`sdekit.AbstractTrainable`, e.g.
    `pis`) is first trained by `sdekit.train` (key `fold_in(key, 2)`; `progress` shows a
    bar); with `out` it checkpoints to `out/checkpoint.eqx`, after writing
    `out/config.toml`, and `resume=True` continues from that checkpoint (and, without a
    `config`, from `out/config.toml`). Samples are drawn with `jax.random.PRNGKey(seed)`
    by `sample_with_stats` (jitted; compilation is timed apart; the sampler's statistics
    go into the metrics), then `diagnostics` (default `DEFAULT_DIAGNOSTICS`, those
    registered) run with key `fold_in(key, 1)`; one that fails is reported in
    `metrics["diagnostic_errors"]` and a `RunWarning`. Diagnostics may take
    `diagnostic_budget` times the run's own time (train + compile + sample seconds;
    default: `SDEKIT_DIAGNOSTIC_BUDGET`, else `DIAGNOSTIC_BUDGET` = 1; `math.inf`: no
    limit): one whose declared cost (`AbstractDiagnostic.cost`, its predicted seconds)
    does not fit in what is left is not started, and is listed in
    `metrics["diagnostics_skipped"]` (`sdekit.diagnose` computes it later). Where the
    weighted estimates are not to be trusted (`ess` or `min_ess` below
    `sdekit.metrics.MIN_ESS`, `pareto_k` above `sdekit.metrics.MAX_PARETO_K`), each reason
    is a `RunWarning` and a line of `metrics["warnings"]`.

    A run whose samples or log-weights are mostly not finite (`MAX_NONFINITE_FRACTION`)
    raises `RunFailed`, naming the likely cause and what to try, before any diagnostic;
    with `out` it writes `metrics.json` with `"status": "failed"` and the message, and
    removes any `samples.npz` and `samples.png` there. Otherwise, with `out`, the files
    `OUTPUT_FILES` are written atomically at the end (`metrics["status"]` is `"ok"`).
    `strict=True` raises what would otherwise be a warning. With `progress`, each phase
    (train, compile, sample, diagnose NAME) is shown on stderr with its duration and rate
    (training steps or samples per second, compilation excluded); with a `watchdog` of S
    seconds, a phase that makes no progress for S seconds (a chunk of training steps, or a
    whole compile, sample or diagnose phase) ends the process with a one-line error (exit
    status 3).

    In a multi-process run (`sdekit.initialize_distributed`) every process calls `run` with
    the same arguments; each returns the whole run, and only process 0 writes files.
    """
    budget_factor = _budget_factor(diagnostic_budget)  # a bad value said before any work
    out = None if out is None else io.check_writable_dir(out)
    cfg = _config_of(config, out, resume)
    sampler, target = compose_config(cfg)
    phases = _Phases(progress, watchdog)
    sampler, train_seconds = _train(sampler, cfg, out, resume, phases)
    samples, sampled = _sample(sampler, cfg, strict, phases)
    metrics = {"status": "ok",
               **{k: sampled[k] for k in ("n", "dim", "seed", "n_nonfinite", "has_log_weights")},
               "train_seconds": train_seconds, **sampled}
    failure = _failure(sampler, target, samples)
    if failure is not None:
        _fail(Run(cfg, sampler, target, samples, metrics, out), failure)
    if metrics["n_nonfinite"]:
        warnings.warn(f"{metrics['n_nonfinite']} of {cfg['n']} samples are not finite (kept "
                      f"in samples.npz, counted in metrics.json)", RunWarning, stacklevel=2)
    own_time = train_seconds + metrics["compile_seconds"] + metrics["sample_seconds"]
    _run_diagnostics(diagnostics, sampler, target, samples, cfg, metrics, strict,
                     budget_factor * own_time, phases)
    _warn_untrusted(metrics)
    result = Run(cfg, sampler, target, samples, metrics, out)
    if out is not None and is_writer():
        _write(result, strict)
    return result


def _trained(sampler: AbstractSampler, directory: Path) -> AbstractSampler:
    checkpoint = directory / "checkpoint.eqx"
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint} does not exist: the trained sampler is lost")
    sampler, step = load_checkpoint(sampler, checkpoint)
    if step < sampler.train_options.steps:
        raise ConfigError(
            f"{checkpoint} holds {step} of {sampler.train_options.steps} training steps; "
            f"finish the run first (sdekit sample --resume {directory})")
    return sampler


def _require(directory: Path, *names: str) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise ConfigError(f"{directory / name} does not exist; is {directory} a finished "
                              f"`sdekit sample` run?")


def load_run(directory: str | Path) -> Run:
    """The finished run in `directory` (from `sdekit.run` or `sdekit sample`).

    The sampler is composed again from `config.toml` and, where it trains, its trained
    state read from `checkpoint.eqx`; the samples come from `samples.npz` and the metrics
    from `metrics.json`, which is written last and so marks a finished run. Nothing is
    recomputed. Raises `ConfigError` naming what is missing or incomplete, or the error of
    a run that failed (`sdekit.RunFailed`).
    """
    directory = Path(directory)
    metrics_path = directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if metrics.get("status") == "failed":
        raise ConfigError(f"the run in {directory} failed and has no samples: "
                          f"{metrics.get('error', 'see its metrics.json')}")
    _require(directory, "config.toml", "samples.npz")
    path = directory / "config.toml"
    cfg = resolve_config(load_config(path), source=str(path))
    sampler, target = compose_config(cfg)
    if isinstance(sampler, AbstractTrainable):
        sampler = _trained(sampler, directory)  # unfinished training: said first
    _require(directory, "metrics.json")  # written last: without it, the run did not finish
    arrays = io.load_npz(directory / "samples.npz")
    log_weights = arrays.get("log_weights")
    samples = Samples(jnp.asarray(arrays["x"]),
                      None if log_weights is None else jnp.asarray(log_weights))
    return Run(cfg, sampler, target, samples, metrics, directory)


def _diagnostic_objects(diagnostics: Sequence[str] | Mapping[str, Mapping[str, Any]] | None
                        ) -> dict[str, AbstractDiagnostic]:
    """Each named diagnostic built with its options (checked, with "did you mean")."""
    reg = registry()
    if diagnostics is None:
        diagnostics = default_diagnostics()
    if not isinstance(diagnostics, Mapping):
        diagnostics = {name: {} for name in diagnostics}
    entries = {name: reg.get("diagnostic", name) for name in diagnostics}  # names first
    built = {}
    for name, options in diagnostics.items():
        checked = check_section(name, options, entries[name].options(),
                                owner=f"diagnostic {name!r}")
        built[name] = create("diagnostic", name, **checked)
    return built


def diagnose(
    run_: Run,
    diagnostics: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """Run `diagnostics` on a finished run; what `sdekit diagnose` does.

    `diagnostics` are registered names, or a mapping name -> options (default:
    `DEFAULT_DIAGNOSTICS`, those registered). Each gets the key `fold_in(key, 1)`, as in
    `sdekit.run`, so the values repeat the run's metrics. Returns `{NAME: {metric: value}}`
    and, for those that failed, `"errors": {NAME: message}`. Where the run has a
    directory, writes `diagnostics.json` (the result) and `NAME.png` for each diagnostic
    that draws its results, atomically.
    """
    chosen = _diagnostic_objects(diagnostics)
    key = jax.random.fold_in(run_.key, 1)
    results, errors, figures = _evaluate(chosen, key, run_.target, run_.sampler, run_.samples,
                                         draw=True, strict=strict)
    out: dict[str, Any] = dict(results)
    if errors:
        out["errors"] = errors
    if run_.directory is not None:
        pngs = {f"{name}.png": png for name, png in figures.items()}
        io.write_files(run_.directory, {"diagnostics.json": io.json_dumps(out), **pngs})
    return out
