"""Diffusion samplers on the benchmark targets: log Ẑ error, ELBO, EUBO, ESS, Sinkhorn, cost.

    python benchmarks/diffusion_samplers.py                       # the full grid, K = 128
    python benchmarks/diffusion_samplers.py --samplers pis --targets funnel --seeds 0
    python benchmarks/diffusion_samplers.py --samplers follmer mc-score nuts smc \
        --targets funnel many-well-54 --seeds 0 -n 2000          # training-free, same budget
    python benchmarks/diffusion_samplers.py --samplers pis --targets many-well-54 \
        --loss log-variance --exploration 0.5                     # another training variant
    python benchmarks/diffusion_samplers.py --samplers cmcd scld --targets funnel \
        --dynamics underdamped                                    # annealed samplers
    python benchmarks/diffusion_samplers.py --table               # the stored results
    python benchmarks/diffusion_samplers.py --memory              # peak memory of the MC drift

Trained samplers (`pis`, `dds`, `dis`, and the annealed `cmcd`, `scld` with the `mlp`
control and the per-target `ANNEALED_SETTINGS`) are trained with `sdekit.train` and then
sampled; an annealed row counts its evaluations with the sampler's `target_evaluations`.
Training-free ones (`follmer`, `mc-score` = `reverse-sde` with the `mc-score` score on
`vp`) and the baselines (`nuts`, `smc`) spend their whole cost at sampling time; their
settings are derived from `--budget`, a number of target evaluations, which defaults to
what a trained row on the same target spends with the default settings ((iterations x 256
trajectories + 10,000 samples) x 129 evaluations: 6.73e7 at 2000 iterations, 1.33e8 on
the funnel's 4000): `follmer`/`mc-score` through their draws per
drift evaluation, `smc` through its number of temperatures, `nuts` through `thinning`,
chosen from a pilot run (counted). Every row records `budget` and `target_evaluations`
(evaluations of log γ, each with its gradient where the method uses one) for training
and sampling together.

Runs each (sampler, target, seed), prints a table of medians and spreads over seeds and
writes the raw per-seed results to `benchmarks/results/diffusion_samplers.json` after
each run (atomically, merged with what is there, keyed by sampler/target/seed and, for
trained samplers, the training variant: `kl`, `lv` or `lv+e<exploration>`). The tables of
docs/samplers.md and docs/training-free.md come from these configurations.
"""

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit import metrics

RESULTS = Path(__file__).parent / "results" / "diffusion_samplers.json"

#: Per-target settings: process options per sampler family, training length and loss.
TARGETS = {
    # 4000 iterations: what fits the funnel's 5-minute training budget (0.065-0.070 s a step)
    "funnel": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 4000},
    "gmm40": {"pbm": {"sigma": 20.0}, "vp": {"sigma": 20.0}, "train_iters": 2000},
    "many-well-54": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 2000},
    "many-well-32": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 2000},
}
#: The training loss of the trained samplers: (loss, exploration), overridable from the CLI.
LOSS = ("kl", 0.0)
PROCESS = {"pis": "pbm", "dds": "vp", "dis": "vp", "follmer": "pbm", "mc-score": "vp"}
TRAINED = ("pis", "dds", "dis")
#: Annealed samplers: per-target prior scale, initial step size, learning rate and the
#: training iterations that fit 5 minutes on 2 CPU cores (the published annealed
#: samplers' prior std: 1 on the funnel and many-well, 40 on gmm40).
ANNEALED = ("cmcd", "scld")
ANNEALED_SETTINGS = {
    # 0.085 s a step at batch 256, K = 128
    "funnel": {"prior_scale": 1.0, "step_size": 0.1, "learning_rate": 3e-3, "train_iters": 3300},
    "gmm40": {"prior_scale": 40.0, "step_size": 1.0, "learning_rate": 1e-3, "train_iters": 2000},
    "many-well-54": {"prior_scale": 1.0, "step_size": 0.1, "learning_rate": 3e-3, "train_iters": 2000},
    "many-well-32": {"prior_scale": 1.0, "step_size": 0.1, "learning_rate": 3e-3, "train_iters": 2000},
}
TRAINING_FREE = ("follmer", "mc-score", "nuts", "smc")
#: Fixed settings of the training-free samplers; the budget sets the rest (see `spec`).
FREE_STEPS = 64  # follmer and mc-score time steps
SMC = {"mcmc_steps": 2, "leapfrog": 5}
#: NUTS: `thinning` is chosen from a pilot run of `NUTS_PILOT` kept iterations per chain.
NUTS = {"num_warmup": 500, "chains": 20}
NUTS_PILOT = 10


def controlled_evaluations(r: dict) -> int:
    """Target evaluations of a trained sampler: the PIS-grad controller takes ∇log γ at each
    of the `steps` kernels, plus log γ at the end, for every training and sampling path."""
    return (r["train_iters"] * r["batch"] + r["n"]) * (r["steps"] + 1)


def default_budget(target_name: str) -> int:
    """What a trained row on `target_name` spends with the default settings (its training
    iterations x 256 paths + 10,000 samples, 129 evaluations each)."""
    iters = TARGETS[target_name]["train_iters"]
    return controlled_evaluations({"train_iters": iters, "batch": 256, "n": 10_000, "steps": 128})


def free_draws(n: int, budget: int) -> int:
    """Draws per drift evaluation for `follmer`/`mc-score`: `n (K draws + 1)` <= budget."""
    return max(1, (budget // n - 1) // FREE_STEPS)


def spec(sampler_name: str, n: int, budget: int) -> dict:
    """The sampler spec of a training-free sampler spending about `budget` evaluations
    (for `nuts`, before its pilot run sets `thinning`; see `nuts_thinning`)."""
    if sampler_name == "follmer":
        draws = free_draws(n, budget)
        return {"name": "follmer", "steps": FREE_STEPS, "draws": draws, "chunk": min(draws, 128)}
    if sampler_name == "mc-score":
        return {"name": "reverse-sde", "steps": FREE_STEPS}
    if sampler_name == "smc":
        per_step = n * (2 + SMC["mcmc_steps"] * SMC["leapfrog"])
        return {"name": "smc", "steps": max(1, budget // per_step - 1), **SMC}
    return {"name": "nuts", **NUTS}


def nuts_thinning(target, key, n: int, budget: int) -> tuple[int, dict]:
    """`thinning` for `nuts` to spend about `budget` evaluations on `n` samples, from a pilot.

    The pilot is the same NUTS (warm-up included) keeping `NUTS_PILOT` iterations per
    chain: it measures the warm-up cost and the evaluations per sampling iteration, which
    depend on the adapted step size. Its own evaluations count towards the row's total.
    """
    chains = NUTS["chains"]
    pilot = sdekit.create("sampler", "nuts", target=target, **NUTS)
    _, stats = jax.block_until_ready(pilot.sample_with_stats(key, chains * NUTS_PILOT))
    pilot_evals, warmup = int(stats["target_evaluations"]), int(stats["warmup_evaluations"])
    per_iteration = (pilot_evals - warmup) / (chains * NUTS_PILOT)
    iterations = chains * -(-n // chains)  # kept states in all chains, before thinning
    thinning = max(1, int((budget - pilot_evals - warmup) / (per_iteration * iterations)))
    return thinning, {"pilot_evaluations": pilot_evals, "pilot_warmup_evaluations": warmup,
                      "pilot_evaluations_per_iteration": per_iteration}


def run_training_free(sampler_name: str, target_name: str, seed: int, n: int, budget: int) -> dict:
    settings = TARGETS[target_name]
    sampler_spec = spec(sampler_name, n, budget)
    parts = {}
    if sampler_name in PROCESS:
        parts["process"] = {"name": PROCESS[sampler_name], **settings[PROCESS[sampler_name]]}
    if sampler_name == "mc-score":
        draws = free_draws(n, budget)
        parts["score"] = {"name": "mc-score", "draws": draws, "chunk": min(draws, 128), "seed": seed}
    if sampler_name == "smc":
        sampler_spec["sigma"] = settings["vp"]["sigma"]
    key = jax.random.key(seed)
    t0 = time.perf_counter()  # for nuts, the pilot run included
    pilot = {}
    if sampler_name == "nuts":
        target = sdekit.create("target", target_name)
        sampler_spec["thinning"], pilot = nuts_thinning(target, jax.random.fold_in(key, 5), n, budget)
    sampler = sdekit.compose(target_name, sampler_spec, **parts)
    target = sampler.target
    if sampler_name == "mc-score":
        samples = jax.block_until_ready(sampler.sample(jax.random.fold_in(key, 1), n))
        stats = {"target_evaluations": n * (FREE_STEPS * sampler.score.draws + 1)}
    else:
        samples, stats = jax.block_until_ready(sampler.sample_with_stats(jax.random.fold_in(key, 1), n))
    sample_seconds = time.perf_counter() - t0
    result = {
        "sampler": sampler_name, "target": target_name, "seed": seed,
        "steps": sampler_spec.get("steps", 0), "options": {**sampler_spec, **parts},
        "sample_seconds": sample_seconds, "train_seconds": 0.0, "n": n,
        "true_log_Z": target.log_Z, "budget": budget,
        "target_evaluations": int(stats["target_evaluations"]) + pilot.get("pilot_evaluations", 0),
        **pilot,
    }
    result.update({k: float(v) for k, v in stats.items() if k != "target_evaluations"})
    result.update(evaluate(key, target, sampler, samples))
    if sampler_name == "smc":  # equal weights carrying log Ẑ: no ELBO; the smallest step ESS
        del result["elbo"]
        result["ess"] = float(stats["min_ess"])
    return result


def evaluate(key, target, sampler, samples) -> dict:
    """log Ẑ and its error, ELBO, ESS (when `samples` are weighted), the `sample-quality`
    and `sinkhorn` metrics, and the EUBO (when the target has exact samples and `sampler`
    backward weights), from `sdekit.metrics` and the registered diagnostics."""
    out = {}
    log_w, n = samples.log_weights, samples.x.shape[0]
    if log_w is not None:
        out["log_Z"] = float(metrics.log_Z(log_w))
        out["log_Z_error"] = out["log_Z"] - target.log_Z
        out["n_nonfinite_weights"] = int(jnp.sum(~jnp.isfinite(log_w)))
        out["elbo"] = float(metrics.elbo(log_w))
        out["ess"] = float(metrics.ess(log_w))
    for name in ("sample-quality", "sinkhorn"):
        try:
            values = sdekit.create("diagnostic", name)(
                jax.random.fold_in(key, 2), target=target, sampler=sampler, samples=samples
            )
            out.update({k: float(v) for k, v in values.items() if np.ndim(v) == 0})
        except Exception as e:  # noqa: BLE001 - keep the sampling result
            out[f"{name.replace('-', '_')}_error"] = f"{type(e).__name__}: {e}"
    if target.has_exact_samples and isinstance(sampler, sdekit.AbstractPathSampler):
        x = target.sample(jax.random.fold_in(key, 3), n)
        out["eubo"] = float(metrics.eubo(sampler.backward_log_weights(jax.random.fold_in(key, 4), x)))
    return out


def memory_report(n: int = 10_000, draws: int = 1000, dim: int = 10) -> list[dict]:
    """Compiled peak memory of the Föllmer drift for `n` points, `draws` draws, dimension `dim`.

    XLA's `memory_analysis()` of `jit(vmap(drift))` on CPU: arguments, outputs and the
    temporaries XLA allocates (the working set), for several `chunk` sizes.
    """
    target = sdekit.create("target", "gaussian", dim=dim)
    process = sdekit.create("process", "pbm")
    x = jnp.zeros((n, dim))
    rows = []
    for chunk in (10, 100, None):
        drift = sdekit.create("score", "follmer", target=target, process=process, draws=draws, chunk=chunk)
        compiled = jax.jit(jax.vmap(drift, in_axes=(None, 0))).lower(0.5, x).compile()
        m = compiled.memory_analysis()
        rows.append({"n": n, "draws": draws, "dim": dim, "chunk": chunk or draws,
                     "temp_MiB": m.temp_size_in_bytes / 2**20,
                     "argument_MiB": m.argument_size_in_bytes / 2**20,
                     "output_MiB": m.output_size_in_bytes / 2**20,
                     "n_x_chunk_x_d_float32_MiB": n * (chunk or draws) * dim * 4 / 2**20})
    return rows


def variant(loss: str, exploration: float) -> str:
    """A trained row's training variant, as shown in the table: `kl`, `lv`, `lv+e0.5`."""
    if loss == "kl":
        return "kl"
    return "lv" + (f"+e{exploration:g}" if exploration else "")


def run(sampler_name: str, target_name: str, seed: int, steps: int, train_iters: int | None,
        n: int, loss: str = LOSS[0], exploration: float = LOSS[1]) -> dict:
    settings = TARGETS[target_name]
    process = PROCESS[sampler_name]
    spec = {"name": sampler_name, "steps": steps,
            "train_iters": train_iters or settings["train_iters"], "loss": loss}
    if exploration:
        spec["exploration"] = exploration
    sampler = sdekit.compose(
        target_name, spec,
        process={"name": process, **settings[process]},
        controller={"name": "pis-grad", "seed": seed},
    )
    target = sampler.target
    key = jax.random.key(seed)
    result = {
        "sampler": sampler_name, "target": target_name, "seed": seed, "steps": steps,
        "variant": variant(loss, exploration), "loss": loss, "exploration": exploration,
        "train_iters": spec["train_iters"], "batch": sampler.batch, "n": n,
        "control_scale": sampler.control_scale, "true_log_Z": target.log_Z,
    }
    result["target_evaluations"] = controlled_evaluations(result)
    return train_and_evaluate(sampler, target, key, n, result)


def run_annealed(sampler_name: str, target_name: str, seed: int, steps: int,
                 train_iters: int | None, n: int, loss: str | None = None,
                 dynamics: str = "overdamped") -> dict:
    """Train and evaluate `cmcd`/`scld` with the target's `ANNEALED_SETTINGS` (and the
    sampler's own loss unless `loss` is given; `kl` trains without a buffer)."""
    spec = {"name": sampler_name, "steps": steps, "dynamics": dynamics, **ANNEALED_SETTINGS[target_name]}
    if loss is not None:
        spec |= {"loss": loss, "buffer": 0} if loss == "kl" else {"loss": loss}
    spec["train_iters"] = train_iters or spec["train_iters"]
    sampler = sdekit.compose(target_name, spec, controller={"name": "mlp", "seed": seed})
    target = sampler.target
    label = variant(sampler.loss_name, 0.0) + ("+ud" if dynamics == "underdamped" else "")
    result = {
        "sampler": sampler_name, "target": target_name, "seed": seed, "steps": steps,
        "variant": label, "loss": sampler.loss_name, "dynamics": dynamics,
        "buffer": sampler.buffer, "train_iters": spec["train_iters"],
        "batch": sampler.batch, "n": n, "segments": sampler.segments,
        "true_log_Z": target.log_Z, "prior_scale": spec["prior_scale"],
        "step_size": spec["step_size"], "learning_rate": spec["learning_rate"],
        "target_evaluations": sampler.target_evaluations(spec["train_iters"] * sampler.batch + n),
    }
    return train_and_evaluate(sampler, target, jax.random.key(seed), n, result)


def train_and_evaluate(sampler, target, key, n: int, result: dict) -> dict:
    """`result` with the training time, the sampling time and `evaluate`'s metrics."""
    try:
        trained, history = sdekit.train(sampler, jax.random.fold_in(key, 0), progress=False)
    except sdekit.TrainingDiverged as e:  # a row of its own: the table counts it
        return {**result, "diverged": str(e)}
    t0 = time.perf_counter()
    samples = jax.block_until_ready(trained.sample(jax.random.fold_in(key, 1), n))
    result["sample_seconds"] = time.perf_counter() - t0
    result["train_seconds"] = float(history["train_seconds"])
    result.update(evaluate(key, target, trained, samples))
    return result


def table(results: list[dict]) -> str:
    cols = ("log_Z_error", "elbo", "eubo", "ess", "sinkhorn", "mode_coverage", "train_seconds",
            "sample_seconds", "budget", "target_evaluations")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if "target_evaluations" not in r and r["sampler"] in TRAINED:
            r = {**r, "target_evaluations": controlled_evaluations(r)}
        trained = r["sampler"] in (*TRAINED, *ANNEALED)
        name = f"{r['sampler']} {row_key(r)[3]}" if trained else r["sampler"]
        groups.setdefault((r["target"], name), []).append(r)
    lines = [f"{'target':<14}{'sampler':<14}{'seeds':>6}{'diverged':>9}"
             + "".join(f" {c:>24}" for c in cols)]
    for (target, sampler), rows in sorted(groups.items()):
        cells = []
        for c in cols:
            v = np.array([r.get(c, np.nan) for r in rows], dtype=float)
            if np.all(np.isnan(v)):
                cells.append("-")
            elif c in ("budget", "target_evaluations"):
                cells.append(f"{np.nanmedian(v):.3g}")
            else:
                cells.append(f"{np.nanmedian(v):.3f} [{np.nanmin(v):.3f},{np.nanmax(v):.3f}]")
        diverged = sum("diverged" in r for r in rows)
        lines.append(f"{target:<14}{sampler:<14}{len(rows):>6}{diverged:>9}"
                     + "".join(f" {c:>24}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=list(TRAINED),
                        choices=[*TRAINED, *ANNEALED, *TRAINING_FREE])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--train-iters", type=int, default=None)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--budget", type=int, default=None,
                        help="Target evaluations per training-free run (default: what a "
                             "trained row spends on the same target).")
    parser.add_argument("--loss", choices=("kl", "log-variance"), default=None,
                        help="Training loss of the trained samplers (default: kl; the "
                             "annealed ones: their own).")
    parser.add_argument("--dynamics", choices=("overdamped", "underdamped"), default="overdamped",
                        help="Dynamics of the annealed samplers.")
    parser.add_argument("--exploration", type=float, default=LOSS[1],
                        help="Exploration of the log-variance loss (noise std x (1 + e)).")
    parser.add_argument("--nuts-chains", type=int, default=NUTS["chains"],
                        help="NUTS chains (each chain stays near the mode it finds: a "
                             "multimodal target needs many).")
    parser.add_argument("--table", action="store_true", help="Print the stored results' table.")
    parser.add_argument("--memory", action="store_true",
                        help="Print the compiled peak memory of the MC drift (N=10^4, M=10^3, d=10).")
    args = parser.parse_args()

    if args.table:
        print(table(json.loads(args.out.read_text()) if args.out.exists() else []))
        return
    if args.memory:
        for row in memory_report():
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
        return
    print(f"device: {jax.devices()[0].device_kind}; {os.cpu_count()} CPUs")
    NUTS["chains"] = args.nuts_chains
    fresh = []
    for target in args.targets:
        for sampler in args.samplers:
            for seed in args.seeds:
                if sampler in TRAINING_FREE:
                    budget = args.budget or default_budget(target)
                    r = run_training_free(sampler, target, seed, args.n, budget)
                elif sampler in ANNEALED:
                    r = run_annealed(sampler, target, seed, args.steps, args.train_iters,
                                     args.n, args.loss, args.dynamics)
                else:
                    r = run(sampler, target, seed, args.steps, args.train_iters, args.n,
                            args.loss or LOSS[0], args.exploration)
                r["device"] = jax.devices()[0].device_kind
                fresh.append(r)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in r.items()}), flush=True)
                save(args.out, r)
    print(table(fresh))


def row_key(r: dict) -> tuple:
    """Rows are stored one per (sampler, target, seed, training variant)."""
    return r["sampler"], r["target"], r["seed"], r.get("variant", "kl" if r["sampler"] in TRAINED else "")


def save(path: Path, row: dict) -> None:
    """Write the rows stored at `path` (re-read: another run may have added some) with `row`
    replacing the row of the same key, atomically."""
    stored = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in stored if row_key(r) != row_key(row)] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)

if __name__ == "__main__":
    main()
