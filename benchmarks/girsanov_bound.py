"""The Girsanov bound against the actual KL for VP and PBM, 1-d three-mode mixture (REPRODUCTIONS.md R2.2).

    python benchmarks/girsanov_bound.py

The exact mixture score perturbed by ε sin(ω x), ε ∈ {0, 0.1, 0.3} (ε = 0: the grid's own
error), ω = 2. The model q is the reverse SDE's density at t_min, solved on a grid by the
finite-volume solver from the prior at t_max (implicit Euler, Scharfetter–Gummel); the
actual KL(p_{t_min} ‖ q) and KL(π ‖ q) by the midpoint rule on the grid. The bound is the
`girsanov-bound` diagnostic: KL(p_{t_max} ‖ prior) + ½∫ g² E‖s_θ − ∇log p_t‖² dt (Monte
Carlo, with its standard error). PBM runs on [0, T − 0.01] (the grid cannot hold the
prior N(0, σ²(T − t)) at the default t_max = T(1 − 1e-6)); its prior term is then small
but not zero, and is included.

Pass: KL(p_{t_min} ‖ q) ≤ bound for VP and PBM at both ε > 0, and bound ≤ 5 × KL.
Prints the table; writes `benchmarks/results/girsanov_bound.json` and `girsanov_bound.png`.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

import sdekit
from sdekit_fokker_planck import Grid, SinePerturbedScore, girsanov_bound, model_densities_grid

RESULTS = Path(__file__).parent / "results"
MIXTURE = dict(means=[[-2.0], [0.5], [2.5]], covs=[0.3, 0.2, 0.5], weights=[0.3, 0.3, 0.4])
PROCESSES = {"vp": ("vp", {}), "pbm": ("pbm", {"t_max": 0.99})}
EPSILONS = (0.0, 0.1, 0.3)
OMEGA = 2.0


def _kl(grid, log_p, q):
    """KL(p ‖ q) = Σ p log(p / q) h, p given by its log-density at the centres."""
    p = jnp.exp(log_p)
    log_q = jnp.log(jnp.maximum(q, jnp.finfo(q.dtype).tiny))
    return float(jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0)) * grid.cell_volume)


def run(cells: int = 2400, steps: int = 2000, n_mc: int = 20_000, seed: int = 0) -> dict:
    rows = []
    with jax.enable_x64(True):
        target = sdekit.create("target", "gmm", **MIXTURE)
        grid = Grid([-6.0], [6.0], cells)
        x0 = target.sample(jax.random.key(seed), n_mc)
        log_pi = grid.evaluate(lambda x: target.log_prob(x))
        for pname, (kind, options) in PROCESSES.items():
            process = sdekit.create("process", kind, **options)
            exact = sdekit.create("score", "exact", target=target, process=process)
            log_p0 = grid.evaluate(lambda x: exact.log_prob(process.t_min, x))
            # a time grid dense at both ends (cosine): the stiff end t_max for pbm, the data end
            u = 0.5 * (1 - jnp.cos(jnp.pi * jnp.linspace(0.0, 1.0, steps + 1)))
            times = process.t_max - (process.t_max - process.t_min) * u[1:]
            for eps in EPSILONS:
                score = SinePerturbedScore(exact, jnp.asarray(eps), OMEGA)
                q = model_densities_grid(score, process, grid, times, substeps=1)[-1]
                bound = girsanov_bound(jax.random.key(seed + 1), score, exact, process, x0, n=n_mc)
                kl = _kl(grid, log_p0, q)
                rows.append(
                    {
                        "process": pname,
                        "epsilon": eps,
                        "omega": OMEGA,
                        "kl_p_tmin_q": kl,
                        "kl_pi_q": _kl(grid, log_pi, q),
                        "mass_q": float(grid.mass(q)),
                        **bound,
                        "bound_over_kl": bound["girsanov_bound"] / kl if kl > 0 else float("inf"),
                    }
                )
    checks = {}
    for r in rows:
        if r["epsilon"] > 0:
            tag = f"{r['process']}_eps{r['epsilon']}"
            checks[f"{tag}_kl_below_bound"] = r["kl_p_tmin_q"] <= r["girsanov_bound"]
            checks[f"{tag}_bound_within_5x"] = r["girsanov_bound"] <= 5 * r["kl_p_tmin_q"]
    return {
        "setup": {"mixture": MIXTURE, "processes": PROCESSES, "omega": OMEGA, "cells": cells,
                  "steps": steps, "box": [-6.0, 6.0], "n_mc": n_mc},
        "rows": rows,
        "checks": checks,
        "claim_held": all(checks.values()),
    }


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for pname, marker in (("vp", "o"), ("pbm", "s")):
        rows = [r for r in result["rows"] if r["process"] == pname]
        eps = [r["epsilon"] for r in rows]
        ax.plot(eps, [r["kl_p_tmin_q"] for r in rows], marker + "-", label=f"{pname}: KL (grid)")
        ax.errorbar(eps, [r["girsanov_bound"] for r in rows], yerr=[2 * r["girsanov_bound_se"] for r in rows],
                    marker=marker, ls="--", label=f"{pname}: Girsanov bound")
    ax.set_xlabel("ε (score error ε sin(2x))")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=2400, help="finite-volume cells on [-6, 6]")
    p.add_argument("--steps", type=int, default=2000, help="the solver's time steps")
    p.add_argument("--n-mc", type=int, default=20_000, help="Monte-Carlo points of the bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    result = run(args.cells, args.steps, args.n_mc, args.seed)
    print(f"{'process':8}{'eps':>6}{'KL(p_tmin|q)':>14}{'KL(pi|q)':>12}{'bound':>12}{'± se':>10}{'prior':>10}{'bound/KL':>10}")
    for r in result["rows"]:
        print(f"{r['process']:8}{r['epsilon']:6.2f}{r['kl_p_tmin_q']:14.4g}{r['kl_pi_q']:12.4g}"
              f"{r['girsanov_bound']:12.4g}{r['girsanov_bound_se']:10.2g}{r['kl_prior']:10.2g}{r['bound_over_kl']:10.3g}")
    print("checks:", result["checks"], "claim held:", result["claim_held"])
    args.out.mkdir(exist_ok=True, parents=True)
    (args.out / "girsanov_bound.json").write_text(json.dumps(result, indent=2))
    _plot(result, args.out / "girsanov_bound.png")


if __name__ == "__main__":
    main()
