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
from sdekit import AbstractProcess, did_you_mean
from sdekit import io as sio
from sdekit.metrics import mmd, sinkhorn, sliced_w2, w2

from ._data import DATASETS, dataset, load_data
from ._dsm import sample_ode, sample_sde, score_matching
from ._networks import PotentialNet, ScoreNet, score_network

__all__ = ["build", "learned", "load_run", "resolve", "train_run"]

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


def _defaults(fn, skip: Iterable[str]) -> dict[str, Any]:
    return {
        n: p.default for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.default is not p.empty
    }


def _section_options() -> dict[str, dict[str, Any]]:
    """Each section's options and their defaults (`[process]`'s come from its factory)."""
    empty = inspect.Parameter.empty
    return {
        "data": {"source": empty, **DATA_DEFAULTS, "dim": None, "sha256": None},
        "model": _defaults(score_network, ("dim", "process", "key")),
        "training": _defaults(score_matching, ("data", "net", "n_data", "data_key")),
        "sampling": dict(SAMPLING_DEFAULTS),
    }


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise sdekit.ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return seed


def _merge(config: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v)
                           for k, v in (config or {}).items()}
    top = ("seed", *SECTIONS)
    for key in cfg:
        if key not in top:
            raise sdekit.ConfigError(
                f"{source}: unknown key {key!r}.{did_you_mean(key, top)} The keys are "
                f"{', '.join(top)}")
    for s in SECTIONS:
        if not isinstance(cfg.setdefault(s, {}), dict):
            raise sdekit.ConfigError(f"[{s}] must be a table, got {cfg[s]!r}")
    return cfg


def _process_section(section: Mapping[str, Any]) -> dict[str, Any]:
    name = section.get("name", "vp")
    entry = sdekit.registry().get("process", name)
    given = {k: v for k, v in section.items() if k != "name"}
    return {"name": name, **sdekit.check_section("process", given, entry.options(),
                                                 owner=f"process {name!r}")}


def resolve(
    config: Mapping[str, Any] | None = None,
    *,
    data: str | None = None,
    process: str | None = None,
    seed: int | None = None,
    sets: Iterable[str] = (),
    source: str = "config",
) -> dict[str, Any]:
    """The complete configuration of a run, with the core's configuration rules
    (`sdekit.parse_set`, `sdekit.check_section`: "did you mean" for every option, type
    checks, defaults filled in): `config` (a loaded `config.toml`, or nothing), then
    `data`, `process`, `seed`, then `--set SECTION.OPTION=VALUE` strings.
    Raises `sdekit.ConfigError`."""
    cfg = _merge(config, source)
    if data is not None:
        cfg["data"]["source"] = data
    if process is not None and process != cfg["process"].get("name"):
        cfg["process"] = {"name": process}
    cfg["seed"] = _check_seed(seed if seed is not None else cfg.get("seed", 0))
    for text in sets:
        section, option, value = sdekit.parse_set(text, SECTIONS)
        cfg[section][option] = value
    if "source" not in cfg["data"]:
        raise sdekit.ConfigError(f"no data: give DATA (a .npy/.npz file or one of "
                                 f"{', '.join(DATASETS)})")
    for s, options in _section_options().items():
        cfg[s] = sdekit.check_section(s, cfg[s], options)
    cfg["process"] = _process_section(cfg["process"])
    return {"seed": cfg["seed"], **{s: cfg[s] for s in SECTIONS}}


def _load_data(cfg: dict[str, Any], key) -> np.ndarray:
    source = cfg["data"]["source"]
    if source in DATASETS:
        n = cfg["data"]["n"]
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 4):
            raise sdekit.ConfigError(f"data.n must be an integer >= 4, got {n!r}")
        return np.asarray(dataset(source, key, n))
    path = Path(source)
    if path.suffix not in (".npy", ".npz") and not path.exists():
        raise sdekit.ConfigError(f"DATA {source!r} is neither a .npy/.npz file nor a built-in data "
                          f"set ({', '.join(DATASETS)})")
    return load_data(path)


def _split(x: np.ndarray, holdout: float, key) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < holdout < 1:
        raise sdekit.ConfigError(f"data.holdout must be a fraction in (0, 1), got {holdout!r}")
    m = int(round(holdout * x.shape[0]))
    if m < 2 or x.shape[0] - m < 2:
        raise sdekit.ConfigError(f"data.holdout={holdout} of {x.shape[0]} points leaves fewer than 2 "
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
        raise sdekit.ConfigError(f"[model]: {e}") from e


def build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Load and split the data and build the process, the network and the `ScoreMatching`
    model of the configuration `cfg` (from `resolve`); records `data.dim` (and, for a data
    file, `data.sha256`) in `cfg`, and checks a recorded digest against the file."""
    keys = _keys(cfg["seed"])
    x = _load_data(cfg, keys["data"])
    if cfg["data"]["source"] not in DATASETS:
        digest = _digest(x)
        if cfg["data"].setdefault("sha256", digest) != digest:
            raise sdekit.ConfigError(f"{cfg['data']['source']} has changed since the run started "
                              "(its sha256 differs from the one in config.toml)")
    cfg["data"]["dim"] = int(x.shape[1])
    train_x, held_out = _split(x, cfg["data"]["holdout"], keys["split"])
    process = _process(cfg)
    net = _network(cfg, x.shape[1], process, keys["init"])
    try:
        model = score_matching(jnp.asarray(train_x), net, **cfg["training"])
    except (TypeError, ValueError) as e:
        raise sdekit.ConfigError(f"[training]: {e}") from e
    return {"model": model, "process": process, "held_out": held_out, "keys": keys}


def _sample_metrics(x: np.ndarray, ref: np.ndarray, key) -> dict[str, Any]:
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


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def _draw(net, process: AbstractProcess, cfg: Mapping[str, Any], key
          ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Reverse-SDE and PF-ODE samples from the same prior draws, and their timings."""
    s, dim = cfg["sampling"], cfg["data"]["dim"]
    t0 = time.perf_counter()
    sde = np.asarray(sample_sde(net, process, key, s["n"], dim, steps=s["steps"],
                                spacing=s["spacing"]))
    t1 = time.perf_counter()
    ode = np.asarray(sample_ode(net, process, key, s["n"], dim, solver=s["ode_solver"],
                                steps=s["ode_steps"], rtol=s["rtol"], atol=s["atol"]))
    return sde, ode, {"sde_seconds": t1 - t0, "ode_seconds": time.perf_counter() - t1}


def _metrics(trained, history, held_out: np.ndarray, sde: np.ndarray, ode: np.ndarray,
             key) -> dict[str, Any]:
    """Training and held-out losses, and each sampler's distances to the held-out data."""
    last = max(1, min(100, len(history["dsm"]) // 10))
    metrics: dict[str, Any] = {
        "dsm_loss": float(np.nanmean(history["dsm"][-last:])),
        **({"fp_loss": float(np.nanmean(history["fp"][-last:]))} if "fp" in history else {}),
        **_evaluate(trained, held_out, key),
        "n_train": int(trained.data.shape[0]),
        "n_held_out": int(held_out.shape[0]),
        "train_seconds": float(history["train_seconds"]),
    }
    k_sde, k_ode = jax.random.split(key)
    metrics["sde"] = _sample_metrics(sde, held_out, k_sde)
    metrics["ode"] = _sample_metrics(ode, held_out, k_ode)
    both = np.all(np.isfinite(sde), axis=1) & np.all(np.isfinite(ode), axis=1)
    m = min(int(both.sum()), 5000)
    metrics["ode_sde_w2"] = w2(ode[both][:m], sde[both][:m]) if m >= 1 else None
    return metrics


def train_run(
    cfg: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    parts: dict[str, Any] | None = None,
) -> sdekit.Run:
    """Train, sample and evaluate the run `cfg` (from `resolve`), writing its files to `out_dir`.

    Writes `config.toml` first (unless resuming), then `checkpoint.eqx` while training
    (a run that finds it continues from it), and at the end `model.eqx`, `samples.npz`
    (`sde`, `ode`: `(n, d)` samples from the same prior draws), `metrics.json` and
    `samples.png`, each atomically. `parts`: what `build(cfg)` returned, if already built.

    Returns a `sdekit.Run`: its sampler is the registered `reverse-sde` driven by the
    trained network, its samples the reverse-SDE ones, and its target `None` (the run
    learns from data).
    """
    out_dir = sio.check_writable_dir(out_dir)
    parts = build(cfg) if parts is None else parts
    model, process, held_out, keys = parts["model"], parts["process"], parts["held_out"], parts["keys"]
    if not resume:
        sio.write_files(out_dir, {"config.toml": sio.toml_dumps(cfg), "checkpoint.eqx": None,
                                  "model.eqx": None})
    trained, history = sdekit.train(model, keys["train"], checkpoint=out_dir / "checkpoint.eqx",
                                    progress=progress)
    sde, ode, seconds = _draw(trained.net, process, cfg, keys["sample"])
    metrics = {**_metrics(trained, history, held_out, sde, ode, keys["eval"]), **seconds}
    title = f"{cfg['data']['source']}, {cfg['process']['name']}, {cfg['model']['kind']} net"
    sio.write_files(out_dir, {
        "model.eqx": _serialise(trained.net),
        "samples.npz": sio.npz_bytes(sde=sde, ode=ode),
        "metrics.json": sio.json_dumps(metrics),
        "samples.png": plot_samples(held_out, sde, ode, title),
    })
    sampler = sdekit.create("sampler", "reverse-sde", process=process, score=trained.net,
                            steps=cfg["sampling"]["steps"], spacing=cfg["sampling"]["spacing"])
    return sdekit.Run(cfg, sampler, None, sdekit.Samples(jnp.asarray(sde)), metrics, out_dir)


def load_run(run: str | os.PathLike) -> tuple[ScoreNet | PotentialNet, dict[str, Any]]:
    """The trained network of the run directory `run`, and its configuration."""
    run = Path(run)
    config_path, model_path = run / "config.toml", run / "model.eqx"
    for path in (config_path, model_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: is {run} a finished "
                                    "`sdekit train-score` run?")
    cfg = sdekit.load_config(config_path)
    dim = cfg.get("data", {}).get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise sdekit.ConfigError(f"{config_path}: data.dim is missing or not an integer")
    process = _process(cfg)
    skeleton = _network(cfg, dim, process, jax.random.PRNGKey(0))
    try:
        net = eqx.tree_deserialise_leaves(model_path, skeleton)
    except Exception as e:  # noqa: BLE001 - a file that does not fit its config
        raise sdekit.ConfigError(f"{model_path} does not fit the network of {config_path}: "
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
