"""`sdekit.fit_gaussian` (Laplace and mean-field) against long-run posterior means and sds.

    python benchmarks/gaussian_fit.py                  # fits; NUTS references computed once
    python benchmarks/gaussian_fit.py --reference      # recompute the NUTS references
    python benchmarks/gaussian_fit.py --table          # print the stored results

On each target, for each fitting variant and seed, it records the fit's mean and scale
against the reference posterior mean $m$ and standard deviation $\\sigma$, coordinate by
coordinate, in the target's own (unconstrained) coordinates:

- `mean_error`: $|\\mu_i - m_i| / \\sigma_i$ (max and median over coordinates);
- `scale_ratio`: $s_i / \\sigma_i$ (min, median, max);
- `is_ess` and `is_log_Z`: the fit used as an importance-sampling proposal for the target
  (`--is-draws` draws): the effective sample size fraction and $\\log\\hat Z$, against the
  reference $\\log Z$ where known: how good a prior or reference scale the fit is;
- `seconds`: the first call (compilation included) and a second call (another seed);
  `iterations`, `evaluations` (of the log-density), `converged`.

Targets and references:

- `numpyro:examples/eight_schools.py:noncentered` and `:centered` (d = 10): NumPyro NUTS on
  the non-centred model (`--chains` chains of `--warmup` + `--draws`, seed 0), its
  constrained draws mapped to each model's unconstrained coordinates by
  `target.unconstrain` (the centred model's `theta` is the non-centred one's deterministic
  site); the constrained means of `mu` and `tau` are checked against the stored long run
  (`plugins/sdekit_numpyro/data/eight_schools_nuts.json`).
- `logistic-breast-cancer` (d = 31) and `numpyro:examples/logistic_regression.py:model`
  (the same density): NUTS on the NumPyro model; reference log Z from the stored
  importance-sampling run.
- `funnel` (d = 10, sigma = 3): exact: mean 0, sds $3$ and $\\sqrt{E e^{x_0}} = e^{9/4}$.
- `numpyro:benchmarks/gaussian_fit.py:scaled` (d = 2, defined below): a posterior far from
  the origin and from unit scale (mean of `mu` near 1000, sds near 0.07 and 0.1), where
  no default prior fits: NUTS as above.

The NUTS references are stored in the results file (`reference`) and reused unless
`--reference`. Results: `benchmarks/results/gaussian_fit.json`; a run replaces the rows it
recomputes (same target, variant and seed) and keeps the others.
"""

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sdekit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gaussian_fit.json"
STORED_NUTS = ROOT / "plugins" / "sdekit_numpyro" / "data" / "eight_schools_nuts.json"
SCHOOLS = "numpyro:examples/eight_schools.py:"
LOGISTIC = "numpyro:examples/logistic_regression.py:model"
SCALED = "numpyro:benchmarks/gaussian_fit.py:scaled"
TARGETS = (f"{SCHOOLS}noncentered", f"{SCHOOLS}centered", "logistic-breast-cancer", LOGISTIC,
           "funnel", SCALED)
#: The fitting variants: name -> keyword arguments of `sdekit.fit_gaussian`.
VARIANTS = {
    "laplace": {"method": "laplace"},
    "mean-field-500": {"method": "mean-field", "steps": 500},
    "mean-field-1000": {"method": "mean-field", "steps": 1000},
    "mean-field-2000": {"method": "mean-field", "steps": 2000},
}


# --------------------------------------------------------------------------------------
# a posterior in awkward units

#: 50 observations near 1000 with noise sd 0.5: what `scaled` conditions on.
scaled_data = {"y": 1000.0 + 0.5 * np.random.default_rng(0).standard_normal(50)}


def scaled(y=None):
    """Normal observations with unknown mean (prior N(1000, 100^2)) and sd (HalfNormal(10))."""
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(1000.0, 100.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate("n", 50):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


# --------------------------------------------------------------------------------------
# references


def _nuts(model, kwargs: dict, chains: int, warmup: int, draws: int) -> dict:
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), **kwargs)
    return mcmc.get_samples(group_by_chain=True)


def _moments(target, values: dict, chains: int) -> dict:
    """Mean, sd and Monte-Carlo standard error per coordinate of `target`'s points for the
    constrained draws `values` (leading axes chains, draws)."""
    from numpyro.diagnostics import effective_sample_size

    flat = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in values.items()}
    x = np.asarray(target.unconstrain(flat), dtype=np.float64)
    by_chain = x.reshape(chains, -1, x.shape[-1])
    ess = np.asarray(effective_sample_size(by_chain))
    sd = x.std(axis=0)
    return {"mean": x.mean(axis=0).tolist(), "sd": sd.tolist(),
            "mcse_over_sd": (1 / np.sqrt(ess)).tolist(), "draws": int(x.shape[0])}


def schools_reference(args) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    from eight_schools import data, noncentered

    t0 = time.perf_counter()
    samples = _nuts(noncentered, data, args.chains, args.warmup, args.draws)
    seconds = time.perf_counter() - t0
    out = {}
    for model, sites in (("noncentered", ("mu", "tau", "theta_tilde")),
                         ("centered", ("mu", "tau", "theta"))):
        target = sdekit.resolve_target(SCHOOLS + model)
        out[SCHOOLS + model] = _moments(target, {k: samples[k] for k in sites}, args.chains)
    stored = json.loads(STORED_NUTS.read_text())["sites"]
    check = {k: {"this_run": float(np.mean(samples[k])), "stored": stored[k]["mean"],
                 "stored_mcse": stored[k]["mcse"]} for k in ("mu", "tau")}
    method = (f"NumPyro NUTS on the non-centred model, {args.chains} chains x "
              f"({args.warmup} warmup + {args.draws} draws), seed 0")
    for v in out.values():
        v.update(method=method, seconds=seconds, constrained_check=check)
    return out


def logistic_reference(args) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    from logistic_regression import data, model

    t0 = time.perf_counter()
    samples = _nuts(model, data(), args.chains, args.warmup, args.draws)
    target = sdekit.resolve_target(LOGISTIC)
    ref = _moments(target, {"w": samples["w"]}, args.chains)
    ref.update(method=f"NumPyro NUTS, {args.chains} chains x ({args.warmup} warmup + "
                      f"{args.draws} draws), seed 0", seconds=time.perf_counter() - t0)
    return {LOGISTIC: ref, "logistic-breast-cancer": ref}


def scaled_reference(args) -> dict:
    t0 = time.perf_counter()
    samples = _nuts(scaled, scaled_data, args.chains, args.warmup, args.draws)
    ref = _moments(sdekit.resolve_target(SCALED), samples, args.chains)
    ref.update(method=f"NumPyro NUTS, {args.chains} chains x ({args.warmup} warmup + "
                      f"{args.draws} draws), seed 0", seconds=time.perf_counter() - t0)
    return {SCALED: ref}


def funnel_reference(dim: int = 10, scale: float = 3.0) -> dict:
    sd = [scale] + [math.exp(scale**2 / 4)] * (dim - 1)  # Var x_i = E e^{x_0} = e^{scale^2/2}
    return {"funnel": {"mean": [0.0] * dim, "sd": sd, "mcse_over_sd": [0.0] * dim,
                       "method": "exact"}}


def references(args, stored: dict) -> dict:
    """The stored references, with those of `args.targets` that are missing (all of them
    with `--reference`) computed."""
    refs = {} if args.reference else dict(stored)
    builders = {f"{SCHOOLS}noncentered": schools_reference, f"{SCHOOLS}centered": schools_reference,
                LOGISTIC: logistic_reference, "logistic-breast-cancer": logistic_reference,
                SCALED: scaled_reference, "funnel": lambda args: funnel_reference()}
    for target in args.targets:
        if target not in refs:
            print(f"reference for {target} ...", flush=True)
            refs.update(builders[target](args))
    return refs


# --------------------------------------------------------------------------------------
# fits


def _importance(target, fit, key, n: int) -> tuple[float, float]:
    """ESS fraction and log Z-hat of `n` draws of `fit` as a proposal for `target`."""
    x = fit.sample(key, n)
    log_w = jax.vmap(target.log_prob)(x) - jax.vmap(fit.log_prob)(x)
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    return float(sdekit.metrics.ess(log_w)), float(sdekit.log_Z_estimate(log_w))


def fit_row(spec: str, variant: str, seed: int, ref: dict, is_draws: int) -> dict:
    target = sdekit.resolve_target(spec)
    row = {"target": spec, "variant": variant, "seed": seed, **VARIANTS[variant]}
    t0 = time.perf_counter()
    try:
        fit = jax.block_until_ready(
            sdekit.fit_gaussian(target, jax.random.key(seed), **VARIANTS[variant]))
    except sdekit.FitError as e:
        return {**row, "error": str(e).splitlines()[0][:300]}
    row["seconds_first"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(sdekit.fit_gaussian(target, jax.random.key(seed + 1000),
                                              **VARIANTS[variant]))
    row["seconds_second"] = time.perf_counter() - t0
    mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    err = np.abs(np.asarray(fit.mean) - mean) / sd
    ratio = np.asarray(fit.scale) / sd
    ess, log_Z = _importance(target, fit, jax.random.key(seed + 2000), is_draws)
    return {**row, "mean_error_max": float(err.max()), "mean_error_median": float(np.median(err)),
            "scale_ratio_min": float(ratio.min()), "scale_ratio_median": float(np.median(ratio)),
            "scale_ratio_max": float(ratio.max()), "is_ess": ess, "is_log_Z": log_Z,
            "log_Z": target.log_Z, "fit_log_Z": float(fit.log_Z),
            "iterations": int(fit.iterations), "evaluations": int(fit.evaluations),
            "converged": bool(fit.converged),
            "mean": np.asarray(fit.mean).tolist(), "scale": np.asarray(fit.scale).tolist()}


# --------------------------------------------------------------------------------------
# output


def _short(spec: str) -> str:
    return spec.replace("numpyro:examples/", "").replace("numpyro:benchmarks/", "").replace(
        ".py", "")


def print_table(rows: list[dict]) -> None:
    head = (f"{'target':34} {'variant':16} {'seed':>4} {'|dmean|/sd max':>14} {'med':>6} "
            f"{'s/sd min':>8} {'med':>6} {'max':>6} {'IS ess':>7} {'IS logZ':>9} {'logZ':>8} "
            f"{'conv':>5} {'t1 s':>6} {'t2 s':>6}")
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{_short(r['target']):34} {r['variant']:16} {r['seed']:>4} FitError: "
                  f"{r['error'][:90]}")
            continue
        ref = "" if r["log_Z"] is None else f"{r['log_Z']:.3f}"
        print(f"{_short(r['target']):34} {r['variant']:16} {r['seed']:>4} "
              f"{r['mean_error_max']:>14.3f} {r['mean_error_median']:>6.3f} "
              f"{r['scale_ratio_min']:>8.3f} {r['scale_ratio_median']:>6.3f} "
              f"{r['scale_ratio_max']:>6.3f} {r['is_ess']:>7.4f} {r['is_log_Z']:>9.3f} "
              f"{ref:>8} {r['converged']!s:>5} {r['seconds_first']:>6.2f} "
              f"{r['seconds_second']:>6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--is-draws", type=int, default=10_000)
    p.add_argument("--reference", action="store_true", help="recompute the NUTS references")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=5000)
    p.add_argument("--table", action="store_true", help="print the stored results")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.table:
        print_table(stored.get("rows", []))
        return
    refs = references(args, stored.get("reference", {}))
    rows = [fit_row(t, v, s, refs[t], args.is_draws)
            for t in args.targets for v in args.variants for s in args.seeds]
    print_table(rows)
    merged = {(r["target"], r["variant"], r["seed"]): r for r in stored.get("rows", []) + rows}
    result = {"reference": refs, "rows": list(merged.values()),
              "command": " ".join(["python"] + sys.argv),
              "device": str(jax.devices()[0]), "jax": jax.__version__,
              "python": platform.python_version(), "date": datetime.date.today().isoformat()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
