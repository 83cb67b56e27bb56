"""A score-matching run: configuration, training, samples, metrics and files; and `learned`.

A run directory holds `config.toml` (everything that determines the run), `checkpoint.eqx`
(the training state, for `--resume`), `model.eqx` (the trained network's leaves),
`samples.npz`, `metrics.json` and `samples.png`. Every file is data: the network is
rebuilt from `config.toml` and its leaves read with `equinox.tree_deserialise_leaves`.
"""

import hashlib
import inspect
import io
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit import AbstractProcess
from sdekit import io as _io

from ._data import DATASETS, dataset, load_data
from ._dsm import sample_ode, sample_sde, score_matching
from ._networks import PotentialNet, ScoreNet, score_network

__all__ = ["ConfigError", "build", "learned", "load_run", "resolve", "train_run"]

#: The files of a run directory.
RUN_FILES = ("config.toml", "checkpoint.eqx", "model.eqx", "samples.npz", "metrics.json",
             "samples.png")
#: What `[sampling]` takes: samples per sampler, the reverse SDE's Euler grid, the ODE solver.
SAMPLING_DEFAULTS = {
    "n": 2000, "steps": 400, "spacing": "quadratic", "ode_solver": "tsit5", "ode_steps": 4096,
    "rtol": 1e-5, "atol": 1e-5,
}
#: What `[data]` takes besides `source`: points drawn from a built-in set, held-out fraction.
DATA_DEFAULTS = {"n": 10_000, "holdout": 0.2}
SECTIONS = ("data", "process", "model", "training", "sampling")


class ConfigError(sdekit.SdekitError):
    """A `train-score` configuration that cannot describe a run."""


def _defaults(fn, skip: Iterable[str]) -> dict[str, Any]:
    return {
        n: p.default for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.default is not p.empty
    }


def _section_defaults() -> dict[str, dict[str, Any]]:
    return {
        "data": dict(DATA_DEFAULTS),
        "model": _defaults(score_network, ("dim", "process", "key")),
        "training": _defaults(score_matching, ("data", "net", "n_data", "data_key")),
        "sampling": dict(SAMPLING_DEFAULTS),
    }


def _coerce(where: str, value: Any, default: Any) -> Any:
    if default is None or isinstance(default, str):
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            what = "true or false" if isinstance(default, bool) else "a number"
            raise ConfigError(f"{where} must be {what}, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value) if isinstance(default, float) else value
    return value


def resolve(
    config: Mapping[str, Any] | None = None,
    *,
    data: str | None = None,
    process: str | None = None,
    seed: int | None = None,
    sets: Iterable[str] = (),
) -> dict[str, Any]:
    """The complete configuration of a run: `config` (a loaded `config.toml`, or nothing),
    then `data`, `process`, `seed`, then `--set SECTION.OPTION=VALUE` strings, with every
    default filled in. Raises `ConfigError` for unknown sections or options."""
    cfg: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v)
                           for k, v in (config or {}).items()}
    unknown = sorted(set(cfg) - {"seed", *SECTIONS})
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; the keys are "
                          f"seed, {', '.join(SECTIONS)}")
    for s in SECTIONS:
        cfg.setdefault(s, {})
        if not isinstance(cfg[s], dict):
            raise ConfigError(f"[{s}] must be a table, got {cfg[s]!r}")
    if data is not None:
        cfg["data"]["source"] = data
    if process is not None and process != cfg["process"].get("name"):
        cfg["process"] = {"name": process}
    cfg["process"].setdefault("name", "vp")
    if seed is not None:
        cfg["seed"] = seed
    cfg.setdefault("seed", 0)
    for text in sets:
        key, eq, raw = text.partition("=")
        section, dot, option = key.strip().partition(".")
        if not eq or not dot or section not in SECTIONS or not option or not raw.strip():
            raise ConfigError(f"--set expects SECTION.OPTION=VALUE with SECTION one of "
                              f"{', '.join(SECTIONS)}, got {text!r}")
        cfg[section][option] = _io.parse_toml_value(raw.strip())
    if "source" not in cfg["data"]:
        raise ConfigError("no data: give DATA (a .npy/.npz file or one of "
                          f"{', '.join(DATASETS)})")
    if isinstance(cfg["seed"], bool) or not (isinstance(cfg["seed"], int) and 0 <= cfg["seed"] < 2**32):
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {cfg['seed']!r}")
    defaults = _section_defaults()
    for s, opts in defaults.items():
        extra = sorted(set(cfg[s]) - set(opts) - ({"source", "dim", "sha256"} if s == "data" else set()))
        if extra:
            raise ConfigError(f"unknown option(s) {', '.join(f'{s}.{e}' for e in extra)}; "
                              f"[{s}] takes {', '.join(opts)}")
        for k, default in opts.items():
            if k in cfg[s]:
                cfg[s][k] = _coerce(f"{s}.{k}", cfg[s][k], default)
            elif default is not None:
                cfg[s][k] = default
    entry = sdekit.registry().get("process", cfg["process"]["name"])
    for k, default in entry.options().items():
        if k not in cfg["process"] and default is not None and _io.is_toml_value(default):
            cfg["process"][k] = default
    return cfg


def _load_data(cfg: dict[str, Any], key) -> np.ndarray:
    source = cfg["data"]["source"]
    if source in DATASETS:
        n = cfg["data"]["n"]
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 4):
            raise ConfigError(f"data.n must be an integer >= 4, got {n!r}")
        return np.asarray(dataset(source, key, n))
    path = Path(source)
    if path.suffix not in (".npy", ".npz") and not path.exists():
        raise ConfigError(f"DATA {source!r} is neither a .npy/.npz file nor a built-in data "
                          f"set ({', '.join(DATASETS)})")
    return load_data(path)


def _split(x: np.ndarray, holdout: float, key) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < holdout < 1:
        raise ConfigError(f"data.holdout must be a fraction in (0, 1), got {holdout!r}")
    m = int(round(holdout * x.shape[0]))
    if m < 2 or x.shape[0] - m < 2:
        raise ConfigError(f"data.holdout={holdout} of {x.shape[0]} points leaves fewer than 2 "
                          "points on one side")
    perm = np.asarray(jax.random.permutation(key, x.shape[0]))
    return x[perm[m:]], x[perm[:m]]


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _keys(seed: int) -> dict[str, jax.Array]:
    names = ("data", "split", "init", "train", "sample", "eval")
    return dict(zip(names, jax.random.split(jax.random.PRNGKey(seed), len(names))))


def _process(cfg: Mapping[str, Any]) -> AbstractProcess:
    opts = {k: v for k, v in cfg["process"].items() if k != "name"}
    return sdekit.create("process", cfg["process"]["name"], **opts)


def _network(cfg: Mapping[str, Any], dim: int, process: AbstractProcess, key) -> ScoreNet | PotentialNet:
    try:
        return score_network(dim, process, **cfg["model"], key=key)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[model]: {e}") from e


def build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Load and split the data and build the process, the network and the `ScoreMatching`
    model of the configuration `cfg` (from `resolve`); records `data.dim` (and, for a data
    file, `data.sha256`) in `cfg`, and checks a recorded digest against the file."""
    keys = _keys(cfg["seed"])
    x = _load_data(cfg, keys["data"])
    if cfg["data"]["source"] not in DATASETS:
        digest = _digest(x)
        if cfg["data"].setdefault("sha256", digest) != digest:
            raise ConfigError(f"{cfg['data']['source']} has changed since the run started "
                              "(its sha256 differs from the one in config.toml)")
    cfg["data"]["dim"] = int(x.shape[1])
    train_x, held_out = _split(x, cfg["data"]["holdout"], keys["split"])
    process = _process(cfg)
    net = _network(cfg, x.shape[1], process, keys["init"])
    try:
        model = score_matching(jnp.asarray(train_x), net, **cfg["training"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[training]: {e}") from e
    return {"model": model, "process": process, "held_out": held_out, "keys": keys}


def _sample_metrics(x: np.ndarray, ref: np.ndarray, key) -> dict[str, Any]:
    from sdekit_diagnostics import mmd, sinkhorn, sliced_w2, w2

    finite = x[np.all(np.isfinite(x), axis=1)]
    out: dict[str, Any] = {"n_nonfinite": int(x.shape[0] - finite.shape[0])}
    m = min(finite.shape[0], ref.shape[0])
    if m < 2:
        return out
    a, b = jnp.asarray(finite[:m]), jnp.asarray(ref[:m])
    k1, k2, k3 = jax.random.split(key, 3)
    out["mmd"] = float(mmd(a, b, key=k1))
    out["sinkhorn"] = float(sinkhorn(a, b, key=k2).cost)
    out["sliced_w2"] = float(sliced_w2(a, b, k3))
    out["w2"] = w2(finite[: min(m, 5000)], ref[: min(m, 5000)])
    return out


@eqx.filter_jit
def _held_out_losses(model, key) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(key)
    dsm = model.losses(k1, 8192)["dsm"]
    kt, kz, kd, kp = jax.random.split(k2, 4)
    x0 = model.data[jax.random.randint(kd, (1024,), 0, model.data.shape[0])]
    t = model.sample_times(kt, 1024)
    a, s = jax.vmap(model.process.marginal)(t)
    xt = a[:, None] * x0 + s[:, None] * jax.random.normal(kz, x0.shape, x0.dtype)
    return dsm, model.fp_loss(kp, t, xt)


def _evaluate(model, held_out: np.ndarray, key) -> dict[str, float]:
    """DSM loss (8192 draws) and mean squared FP residual (1024 noised points) on held-out
    data, from one fixed key."""
    dsm, fp = _held_out_losses(eqx.tree_at(lambda m: m.data, model, jnp.asarray(held_out)), key)
    return {"dsm_loss_held_out": float(dsm), "fp_residual_held_out": float(fp)}


def plot_samples(held_out: np.ndarray, sde: np.ndarray, ode: np.ndarray, title: str = "") -> bytes:
    """A PNG: held-out data, reverse-SDE and PF-ODE samples (first two coordinates)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ref = held_out[:, :2] if held_out.shape[1] > 1 else np.c_[held_out, np.zeros(len(held_out))]
    lim = 1.3 * np.max(np.abs(ref))
    for i, (name, x) in enumerate((("held-out data", held_out), ("reverse SDE", sde),
                                   ("probability-flow ODE", ode))):
        ax = fig.add_subplot(1, 3, i + 1)
        x = x[np.all(np.isfinite(x), axis=1)]
        y = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
        ax.scatter(x[:, 0], y, s=1.5, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_files(out_dir: Path, files: Mapping[str, bytes | str | None]) -> None:
    """Each file written atomically into `out_dir` (created); `None` removes a stale one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content is None:
            (out_dir / name).unlink(missing_ok=True)
        else:
            _io.atomic_write(out_dir / name, content)


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def train_run(
    cfg: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, sample and evaluate the run `cfg` (from `resolve`), writing its files to `out_dir`.

    Writes `config.toml` first (unless resuming), then `checkpoint.eqx` while training
    (a run that finds it continues from it), and at the end `model.eqx`, `samples.npz`
    (`sde`, `ode`: `(n, d)` samples from the same prior draws), `metrics.json` and
    `samples.png`, each atomically. `parts`: what `build(cfg)` returned, if already built.
    Returns the trained network, the metrics, the history and the samples.
    """
    out_dir = Path(out_dir)
    _io.check_writable_dir(out_dir)
    parts = build(cfg) if parts is None else parts
    model, process, held_out, keys = parts["model"], parts["process"], parts["held_out"], parts["keys"]
    if not resume:
        write_files(out_dir, {"config.toml": _io.toml_dumps(cfg), "checkpoint.eqx": None,
                              "model.eqx": None})
    trained, history = sdekit.train(model, keys["train"], checkpoint=out_dir / "checkpoint.eqx",
                                    progress=progress)
    net = trained.net
    s = cfg["sampling"]
    dim = cfg["data"]["dim"]
    t0 = time.perf_counter()
    sde = np.asarray(sample_sde(net, process, keys["sample"], s["n"], dim, steps=s["steps"],
                                spacing=s["spacing"]))
    t1 = time.perf_counter()
    ode = np.asarray(sample_ode(net, process, keys["sample"], s["n"], dim, solver=s["ode_solver"],
                                steps=s["ode_steps"], rtol=s["rtol"], atol=s["atol"]))
    t2 = time.perf_counter()
    last = max(1, min(100, len(history["dsm"]) // 10))
    metrics: dict[str, Any] = {
        "dsm_loss": float(np.nanmean(history["dsm"][-last:])),
        **({"fp_loss": float(np.nanmean(history["fp"][-last:]))} if "fp" in history else {}),
        **_evaluate(trained, held_out, keys["eval"]),
        "n_train": int(model.data.shape[0]),
        "n_held_out": int(held_out.shape[0]),
        "train_seconds": float(history["train_seconds"]),
        "sde_seconds": t1 - t0,
        "ode_seconds": t2 - t1,
    }
    k_sde, k_ode = jax.random.split(keys["eval"])
    metrics["sde"] = _sample_metrics(sde, held_out, k_sde)
    metrics["ode"] = _sample_metrics(ode, held_out, k_ode)
    both = np.all(np.isfinite(sde), axis=1) & np.all(np.isfinite(ode), axis=1)
    from sdekit_diagnostics import w2

    m = min(int(both.sum()), 5000)
    metrics["ode_sde_w2"] = w2(ode[both][:m], sde[both][:m]) if m >= 1 else None
    title = f"{cfg['data']['source']}, {cfg['process']['name']}, {cfg['model']['kind']} net"
    write_files(out_dir, {
        "model.eqx": _serialise(net),
        "samples.npz": _io.npz_bytes(sde=sde, ode=ode),
        "metrics.json": _io.json_dumps(metrics),
        "samples.png": plot_samples(held_out, sde, ode, title),
    })
    return {"net": net, "process": process, "metrics": metrics, "history": history,
            "samples": {"sde": sde, "ode": ode}, "held_out": held_out}


def load_run(run: str | os.PathLike) -> tuple[ScoreNet | PotentialNet, dict[str, Any]]:
    """The trained network of the run directory `run`, and its configuration."""
    run = Path(run)
    config_path, model_path = run / "config.toml", run / "model.eqx"
    for path in (config_path, model_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: is {run} a finished "
                                    "`sdekit train-score` run?")
    cfg = _io.load_toml(config_path)
    dim = cfg.get("data", {}).get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ConfigError(f"{config_path}: data.dim is missing or not an integer")
    process = _process(cfg)
    skeleton = _network(cfg, dim, process, jax.random.PRNGKey(0))
    try:
        net = eqx.tree_deserialise_leaves(model_path, skeleton)
    except Exception as e:  # noqa: BLE001 - a file that does not fit its config
        raise ConfigError(f"{model_path} does not fit the network of {config_path}: "
                          f"{type(e).__name__}: {e}") from e
    return net, cfg


def learned(run: str, process: AbstractProcess | None = None) -> ScoreNet | PotentialNet:
    """The score network trained by `sdekit train-score` in the run directory `run`.

    Rebuilt from the run's `config.toml` and `model.eqx` (data only, no code). It carries
    its own process; a `process` composed with it must be the same one.
    """
    net, cfg = load_run(run)
    if process is not None and not (
        type(process) is type(net.process) and bool(eqx.tree_equal(process, net.process))
    ):
        opts = ", ".join(f"{k}={v!r}" for k, v in cfg["process"].items() if k != "name")
        raise ValueError(
            f"the score in {run} was trained under process {cfg['process']['name']!r} "
            f"({opts}); compose it with that process, not {type(process).__name__}"
        )
    return net
