"""Fokker–Planck operator checks on a 2-d Gaussian mixture under OU, VP and VE (REPRODUCTIONS.md R1.1).

    python benchmarks/fp_operator_checks.py

For each process, with the exact mixture marginals (float64):
- the log-FP residual of the analytic log p_t, relative to the size of its terms (< 1e-6);
- the score-FP residual of the analytic score, relative (≈ 0);
- Hutchinson's divergence of the score over 1e4 Rademacher probes against the exact trace
  (within 1%), at points x ~ p_t;
- exact-score PF-ODE and reverse-SDE samples: W2(ODE, SDE) ≤ 1.1 × the noise floor
  W2(SDE, SDE'), and the batched excess of the gap over the floor within 2 standard errors.

Prints the table; writes `benchmarks/results/fp_operator_checks.json` and `fp_operator_checks.png`.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit.fokker_planck import divergence, hutchinson_divergence
from sdekit_fokker_planck import fp_residual, noised_points, ode_sde_gap

RESULTS = Path(__file__).parent / "results"
PROCESSES = {
    "ou": ("vp", {"beta_min": 2.0, "beta_max": 2.0, "sigma": 2**-0.5, "T": 10.0}),  # dX = -X dt + dW
    "vp": ("vp", {}),
    "ve": ("ve", {"sigma_max": 20.0}),
}
MIXTURE = dict(
    means=[[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, -2.5]],
    covs=[[0.5, 0.3], [1.0, 1.0], [0.3, 0.6], [0.2, 0.2]],
    weights=[1.0, 2.0, 1.0, 1.5],
)


def residual_checks(process, target, n_points: int, key) -> dict:
    with jax.enable_x64(True):
        score = sdekit.create("score", "exact", target=target, process=process)
        x0 = target.sample(key, n_points)
        out = fp_residual(jax.random.fold_in(key, 1), score, process, x0, n=n_points)
    return {k: out[k] for k in ("fp_residual_relative", "log_fp_residual_relative", "fp_residual", "log_fp_residual")}


def hutchinson_checks(process, target, n_points: int, probes: int, key) -> dict:
    with jax.enable_x64(True):
        score = sdekit.create("score", "exact", target=target, process=process)
        ts, xs = noised_points(key, process, target.sample(jax.random.fold_in(key, 1), n_points), n_points)
        keys = jax.random.split(jax.random.fold_in(key, 2), n_points)

        @jax.jit
        def one(t, x, k):
            fn = lambda y: score(t, y)  # noqa: E731
            est, se = hutchinson_divergence(fn, x, k, probes)
            return est, se, divergence(fn, x)

        est, se, exact = jax.vmap(one)(ts, xs, keys)
        rel = np.asarray(jnp.abs(est - exact) / jnp.abs(exact))
        z = np.asarray(jnp.abs(est - exact) / se)
        rel_mean = float(jnp.abs(jnp.mean(est) - jnp.mean(exact)) / jnp.abs(jnp.mean(exact)))
    return {
        "hutchinson_probes": probes,
        "hutchinson_median_relative_error": float(np.median(rel)),
        "hutchinson_fraction_within_1pct": float(np.mean(rel < 0.01)),
        "hutchinson_max_z": float(np.max(z)),
        "hutchinson_relative_error_of_mean": rel_mean,
    }


def gap_checks(process, target, n: int, key, sde_steps: int) -> dict:
    score = sdekit.create("score", "exact", target=target, process=process)
    parts = dict(target=target, process=process, score=score)
    sde = sdekit.create("sampler", "reverse-sde", steps=sde_steps, **parts)
    ode = sdekit.create("sampler", "pf-ode", **parts)
    return ode_sde_gap(key, sde, ode, n, batches=5, w2_points=min(n, 2000))


def run(processes=tuple(PROCESSES), n_points: int = 400, hutchinson_points: int = 50,
        probes: int = 10_000, gap_n: int = 2000, sde_steps: int = 500, seed: int = 0,
        gap: bool = True) -> dict:
    """The checks for each process; `gap=False` skips the sampling part (the cheap test)."""
    target = sdekit.create("target", "gmm", **MIXTURE)
    key = jax.random.key(seed)
    rows = {}
    for name in processes:
        kind, options = PROCESSES[name]
        process = sdekit.create("process", kind, **options)
        row = {}
        row.update(residual_checks(process, target, n_points, jax.random.fold_in(key, 1)))
        row.update(hutchinson_checks(process, target, hutchinson_points, probes, jax.random.fold_in(key, 2)))
        if gap:
            row.update(gap_checks(process, target, gap_n, jax.random.fold_in(key, 3), sde_steps))
        row["checks"] = {
            "log_fp_relative_below_1e-6": row["log_fp_residual_relative"] < 1e-6,
            "score_fp_relative_below_1e-6": row["fp_residual_relative"] < 1e-6,
            "hutchinson_within_1pct": row["hutchinson_median_relative_error"] < 0.01,
            "hutchinson_consistent": row["hutchinson_max_z"] < 5.0,
        }
        if gap:
            row["checks"]["gap_within_1.1_floor"] = row["w2_gap"] <= 1.1 * row["w2_floor"]
            row["checks"]["gap_excess_within_2se"] = row["w2_excess"] <= 2 * row["w2_excess_se"]
        rows[name] = row
    return {
        "setup": {"mixture": MIXTURE, "processes": {k: PROCESSES[k] for k in processes}, "n_points": n_points,
                  "hutchinson_points": hutchinson_points, "probes": probes, "gap_n": gap_n, "sde_steps": sde_steps},
        "rows": rows,
        "claim_held": all(all(r["checks"].values()) for r in rows.values()),
    }


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(len(names))
    for i, key in enumerate(("log_fp_residual_relative", "fp_residual_relative")):
        axes[0].bar(x + 0.35 * i, [max(result["rows"][n][key], 1e-18) for n in names], 0.35, label=key)
    axes[0].set_yscale("log")
    axes[0].axhline(1e-6, color="k", ls="--")
    axes[0].set_xticks(x + 0.17, names)
    axes[0].legend(fontsize=7)
    axes[0].set_title("relative FP residuals (float64)")
    axes[1].bar(x, [result["rows"][n]["w2_gap"] for n in names], 0.35, label="W2(ODE, SDE)")
    axes[1].bar(x + 0.35, [result["rows"][n]["w2_floor"] for n in names], 0.35, label="W2(SDE, SDE')")
    axes[1].set_xticks(x + 0.17, names)
    axes[1].legend(fontsize=7)
    axes[1].set_title("exact-score ODE–SDE gap vs noise floor")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-points", type=int, default=400, help="points of the residual checks")
    p.add_argument("--hutchinson-points", type=int, default=50, help="points of the Hutchinson check")
    p.add_argument("--probes", type=int, default=10_000, help="Rademacher probes per point")
    p.add_argument("--gap-n", type=int, default=2000, help="samples of the ODE-SDE gap")
    p.add_argument("--sde-steps", type=int, default=500, help="reverse-SDE Euler steps")
    p.add_argument("--no-gap", action="store_true", help="skip the sampling part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    result = run(n_points=args.n_points, hutchinson_points=args.hutchinson_points, probes=args.probes,
                 gap_n=args.gap_n, sde_steps=args.sde_steps, seed=args.seed, gap=not args.no_gap)
    cols = ["log_fp_residual_relative", "fp_residual_relative", "hutchinson_median_relative_error",
            "hutchinson_fraction_within_1pct", "hutchinson_max_z", "w2_gap", "w2_floor", "w2_excess", "w2_excess_se"]
    print(f"{'process':8}" + "".join(f"{c[:22]:>24}" for c in cols))
    for name, row in result["rows"].items():
        print(f"{name:8}" + "".join(f"{row.get(c, np.nan):24.4g}" for c in cols))
    for name, row in result["rows"].items():
        print(name, row["checks"])
    print("claim held:", result["claim_held"])
    args.out.mkdir(exist_ok=True, parents=True)
    (args.out / "fp_operator_checks.json").write_text(json.dumps(result, indent=2))
    if not args.no_gap:
        _plot(result, args.out / "fp_operator_checks.png")


if __name__ == "__main__":
    main()
