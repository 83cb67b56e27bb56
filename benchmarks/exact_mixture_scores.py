"""Exact mixture scores for VP and PBM against Monte Carlo, and sample quality within the noise floor (REPRODUCTIONS.md R2.1).

    python benchmarks/exact_mixture_scores.py [--quick]

1. Drifts: on a 10-component 2-d mixture, the exact PBM (Föllmer) control
   u = s_exact + x / (σ²(T − t)) against the Monte-Carlo Föllmer drift (`follmer` score of
   `sdekit_montecarlo`) and the exact VP score against the Monte-Carlo score (`mc-score`),
   both at M = 1e5 draws, at points x ~ p_t for t in the middle of the window. Pass: relative
   error ≤ 1% (median over points), and consistent with the Monte-Carlo standard error.
2. Samplers with the exact score (reverse-sde under VP and PBM, pf-ode under VP) against
   exact samples: unbiased MMD² within 2× the noise floor, the floor being the RMS of MMD²
   between independent exact sample sets of the same size (5 pairs). The Euler reverse SDE
   with the exact score is the DDS (VP) / PIS (PBM) path with the optimal drift, and its
   exact discrete-time weights give log Ẑ: pass |log Ẑ − log Z| ≤ 0.05.
3. funnel-10 has no exact score: the Monte-Carlo Föllmer sampler (`follmer`) stands in;
   MMD² against the floor is reported (not a pass criterion of the exact part).

Prints the tables; writes `benchmarks/results/exact_mixture_scores.json` and `exact_mixture_scores.png`.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit.metrics import mmd
from sdekit_fokker_planck import noised_points

RESULTS = Path(__file__).parent / "results"


def mixture10():
    key = jax.random.PRNGKey(10)
    k1, k2 = jax.random.split(key)
    means = jax.random.uniform(k1, (10, 2), minval=-5.0, maxval=5.0)
    variances = jax.random.uniform(k2, (10,), minval=0.2, maxval=1.0)
    return sdekit.create("target", "gmm", means=np.asarray(means), covs=np.asarray(variances), log_Z=0.7)


DRIFTS = {"pbm": (("pbm", {"sigma": 4.0}), "follmer"), "vp": (("vp", {"sigma": 1.0}), "mc-score")}


def drift_checks(target, draws: int, n_points: int, seed: int = 0, which=tuple(DRIFTS)) -> dict:
    out = {}
    key = jax.random.key(seed)
    x0 = target.sample(key, 4 * n_points)
    for name in which:
        (kind, options), mc_name = DRIFTS[name]
        process = sdekit.create("process", kind, **options)
        exact = sdekit.create("score", "exact", target=target, process=process)
        mc = sdekit.create("score", mc_name, target=target, process=process, draws=draws, chunk=1000)
        ts, xs = noised_points(jax.random.fold_in(key, 1), process, x0, n_points, 0.1 * process.T, 0.9 * process.T)
        if name == "pbm":  # compare the controls u = s + x / r_t^2 (the PBM drift of the brief)
            ref = jax.vmap(lambda t, x: exact(t, x) + x / process.reference_std(t) ** 2)(ts, xs)
        else:
            ref = jax.vmap(exact)(ts, xs)
        est, se = jax.jit(jax.vmap(mc.estimate))(ts, xs)
        err = jnp.linalg.norm(est - ref, axis=-1)
        rel = np.asarray(err / jnp.linalg.norm(ref, axis=-1))
        out[name] = {
            "monte_carlo": mc_name,
            "draws": draws,
            "median_relative_error": float(np.median(rel)),
            "max_relative_error": float(np.max(rel)),
            "median_error_over_se": float(np.median(np.asarray(err / se))),
            "max_error_over_se": float(np.max(np.asarray(err / se))),
            "pass_within_1pct": bool(np.median(rel) <= 0.01),
        }
    return out


def _floor(target, n, key, pairs=5):
    vals = [float(mmd(target.sample(jax.random.fold_in(key, 2 * i), n),
                      target.sample(jax.random.fold_in(key, 2 * i + 1), n))) for i in range(pairs)]
    return float(np.sqrt(np.mean(np.square(vals)))), vals


SAMPLERS = ("reverse-sde/vp", "reverse-sde/pbm", "pf-ode/vp")


def sampler_checks(target, n: int, steps: int, seed: int = 0, samplers=SAMPLERS) -> dict:
    key = jax.random.key(seed + 100)
    floor, null = _floor(target, n, key)
    out = {"mmd_floor_rms": floor, "mmd_null_values": null}
    configs = {
        "reverse-sde/vp": ("reverse-sde", {"steps": steps}, ("vp", {"sigma": 1.0})),
        "reverse-sde/pbm": ("reverse-sde", {"steps": steps}, ("pbm", {"sigma": 4.0})),
        "pf-ode/vp": ("pf-ode", {}, ("vp", {"sigma": 1.0})),
    }
    for name in samplers:
        sampler, options, (pkind, popts) = configs[name]
        process = sdekit.create("process", pkind, **popts)
        s = sdekit.compose(target, {"name": sampler, **options}, process=process, score="exact")
        samples = s.sample(jax.random.fold_in(key, 99), n)
        ref = target.sample(jax.random.fold_in(key, 98), n)
        row = {"mmd": float(mmd(samples.x, ref))}
        row["mmd_within_2x_floor"] = row["mmd"] <= 2 * floor
        if sampler == "reverse-sde":
            log_z = float(sdekit.log_Z_estimate(samples.log_weights))
            row["log_Z_error"] = log_z - target.log_Z
            row["log_Z_within_0.05"] = abs(row["log_Z_error"]) <= 0.05
        out[name] = row
    return out


def funnel_check(n: int, steps: int, draws: int, seed: int = 0) -> dict:
    target = sdekit.create("target", "funnel")
    key = jax.random.key(seed + 200)
    floor, _ = _floor(target, n, key)
    s = sdekit.compose(target, {"name": "follmer", "steps": steps, "draws": draws})
    samples = s.sample(jax.random.fold_in(key, 99), n)
    x = samples.x[jnp.all(jnp.isfinite(samples.x), axis=1)]
    m = float(mmd(x, target.sample(jax.random.fold_in(key, 98), x.shape[0])))
    return {"sampler": "follmer (Monte-Carlo drift)", "steps": steps, "draws": draws, "mmd": m,
            "mmd_floor_rms": floor, "mmd_within_2x_floor": m <= 2 * floor,
            "log_Z_error": float(sdekit.log_Z_estimate(samples.log_weights)) - target.log_Z}


def run(quick: bool = False) -> dict:
    target = mixture10()
    drifts = drift_checks(target, draws=10_000 if quick else 100_000, n_points=20 if quick else 50)
    samplers = sampler_checks(target, n=1000 if quick else 2000, steps=200 if quick else 500)
    funnel = funnel_check(n=500 if quick else 1000, steps=50 if quick else 100, draws=200 if quick else 1000)
    checks = {f"{k}_drift_within_1pct": v["pass_within_1pct"] for k, v in drifts.items()}
    for name, row in samplers.items():
        if isinstance(row, dict):
            checks[f"{name}_mmd_within_2x_floor"] = row["mmd_within_2x_floor"]
            if "log_Z_within_0.05" in row:
                checks[f"{name}_log_Z_within_0.05"] = row["log_Z_within_0.05"]
    return {"drifts": drifts, "samplers": samplers, "funnel": funnel, "checks": checks,
            "claim_held": all(checks.values()), "quick": quick}


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in result["samplers"].items() if isinstance(v, dict)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names + ["funnel/follmer"], [result["samplers"][k]["mmd"] for k in names] + [result["funnel"]["mmd"]])
    ax.axhline(2 * result["samplers"]["mmd_floor_rms"], color="k", ls="--", label="2 × noise floor (mixture)")
    ax.set_ylabel("MMD² to exact samples")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer draws, points and samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    result = run(args.quick)
    print("drift vs Monte Carlo:")
    for k, v in result["drifts"].items():
        print(f"  {k:4} {v['monte_carlo']:9} M={v['draws']}: median rel err {v['median_relative_error']:.4g}, "
              f"max {v['max_relative_error']:.4g}, median err/SE {v['median_error_over_se']:.3g}")
    print(f"samplers (MMD² floor rms {result['samplers']['mmd_floor_rms']:.3g}):")
    for k, v in result["samplers"].items():
        if isinstance(v, dict):
            print(f"  {k:16} MMD² {v['mmd']:.3g}  log Z error {v.get('log_Z_error', float('nan')):.4f}")
    f = result["funnel"]
    print(f"funnel-10 follmer: MMD² {f['mmd']:.3g} vs floor {f['mmd_floor_rms']:.3g}, log Z error {f['log_Z_error']:.3f}")
    print("checks:", result["checks"], "claim held:", result["claim_held"])
    args.out.mkdir(exist_ok=True, parents=True)
    (args.out / "exact_mixture_scores.json").write_text(json.dumps(result, indent=2))
    _plot(result, args.out / "exact_mixture_scores.png")


if __name__ == "__main__":
    main()
