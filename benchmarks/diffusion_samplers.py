"""Trained diffusion samplers on the benchmark targets: log Ẑ error, ELBO, EUBO, ESS, Sinkhorn.

    python benchmarks/diffusion_samplers.py                       # the full grid, K = 128
    python benchmarks/diffusion_samplers.py --samplers pis --targets funnel --seeds 0
    python benchmarks/diffusion_samplers.py --table               # the stored results

Runs each (sampler, target, seed), prints a table of medians and spreads over seeds and
writes the raw per-seed results to `benchmarks/results/diffusion_samplers.json`
(merged with what is there, keyed by sampler/target/seed). The configurations below are
the ones the numbers in the issue notes come from.
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

RESULTS = Path(__file__).parent / "results" / "diffusion_samplers.json"

#: Per-target settings: process options per sampler family and training length.
TARGETS = {
    "funnel": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 2000},
    "gmm40": {"pbm": {"sigma": 20.0}, "vp": {"sigma": 20.0}, "train_iters": 2000},
    "many-well-54": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 2000},
    "many-well-32": {"pbm": {"sigma": 1.0}, "vp": {"sigma": 1.0}, "train_iters": 2000},
}
PROCESS = {"pis": "pbm", "dds": "vp", "dis": "vp"}


def run(sampler_name: str, target_name: str, seed: int, steps: int, train_iters: int | None,
        n: int) -> dict:
    settings = TARGETS[target_name]
    process = PROCESS[sampler_name]
    spec = {"name": sampler_name, "steps": steps,
            "train_iters": train_iters or settings["train_iters"]}
    sampler = sdekit.compose(
        target_name, spec,
        process={"name": process, **settings[process]},
        controller={"name": "pis-grad", "seed": seed},
    )
    target = sampler.target
    key = jax.random.key(seed)
    trained, history = sdekit.train(sampler, jax.random.fold_in(key, 0), progress=False)
    t0 = time.perf_counter()
    samples = jax.block_until_ready(trained.sample(jax.random.fold_in(key, 1), n))
    sample_seconds = time.perf_counter() - t0
    result = {
        "sampler": sampler_name, "target": target_name, "seed": seed, "steps": steps,
        "train_iters": spec["train_iters"], "batch": sampler.batch,
        "train_seconds": float(history["train_seconds"]), "sample_seconds": sample_seconds,
        "n": n, "true_log_Z": target.log_Z,
    }
    log_w = samples.log_weights
    result["log_Z"] = float(sdekit.log_Z_estimate(log_w))
    result["log_Z_error"] = result["log_Z"] - target.log_Z
    result["elbo"] = float(jnp.mean(log_w))
    result["ess"] = float(jnp.exp(2 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2 * log_w)) / n)
    try:
        values = sdekit.create("diagnostic", "sample-quality")(
            jax.random.fold_in(key, 2), target=target, sampler=trained, samples=samples
        )
        result.update({k: float(v) for k, v in values.items() if np.ndim(v) == 0})
    except Exception as e:  # noqa: BLE001 - keep the training result
        result["sample_quality_error"] = f"{type(e).__name__}: {e}"
    if target.has_exact_samples:
        x = target.sample(jax.random.fold_in(key, 3), n)
        result["eubo"] = float(jnp.mean(trained.backward_log_weights(jax.random.fold_in(key, 4), x)))
    return result


def table(results: list[dict]) -> str:
    cols = ("log_Z_error", "elbo", "eubo", "ess", "sinkhorn", "mode_coverage", "train_seconds")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["target"], r["sampler"]), []).append(r)
    lines = [f"{'target':<14}{'sampler':<8}{'seeds':>6}" + "".join(f" {c:>24}" for c in cols)]
    for (target, sampler), rows in sorted(groups.items()):
        cells = []
        for c in cols:
            v = np.array([r.get(c, np.nan) for r in rows], dtype=float)
            cells.append("-" if np.all(np.isnan(v)) else
                         f"{np.nanmedian(v):.3f} [{np.nanmin(v):.3f},{np.nanmax(v):.3f}]")
        lines.append(f"{target:<14}{sampler:<8}{len(rows):>6}" + "".join(f" {c:>24}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["pis", "dds", "dis"])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--train-iters", type=int, default=None)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="Print the stored results' table.")
    args = parser.parse_args()

    stored = json.loads(args.out.read_text()) if args.out.exists() else []
    if args.table:
        print(table(stored))
        return
    print(f"device: {jax.devices()[0].device_kind}; {os.cpu_count()} CPUs")
    fresh = []
    for target in args.targets:
        for sampler in args.samplers:
            for seed in args.seeds:
                r = run(sampler, target, seed, args.steps, args.train_iters, args.n)
                r["device"] = jax.devices()[0].device_kind
                fresh.append(r)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in r.items()}), flush=True)
    same = {(r["sampler"], r["target"], r["seed"], r["steps"]) for r in fresh}
    kept = [r for r in stored if (r["sampler"], r["target"], r["seed"], r["steps"]) not in same]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept + fresh, indent=1))
    os.replace(tmp, args.out)
    print(table(fresh))


if __name__ == "__main__":
    main()
