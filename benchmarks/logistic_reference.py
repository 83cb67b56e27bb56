"""The reference log Z of `logistic-breast-cancer`, by importance sampling (run once, stored).

    python benchmarks/logistic_reference.py                 # 3 * 10^6 draws; writes the JSON
    python benchmarks/logistic_reference.py --draws 1e6 --dry-run

Method (in float64):

1. The mode $\\hat w$ of $\\log\\gamma$ by BFGS (`jax.scipy.optimize.minimize`), and the
   Hessian $H = -\\nabla^2\\log\\gamma(\\hat w)$ by `jax.hessian`: the Laplace approximation
   $\\mathcal N(\\hat w, H^{-1})$.
2. A pilot run: `--pilot-draws` draws from the Student-t $t_5(\\hat w, H^{-1})$ give the
   self-normalised posterior mean $m$ and covariance $C$ (the posterior is skewed, so the
   Laplace fit alone gives an effective sample size of only ~3%).
3. Importance sampling from the multivariate Student-t $t_\\nu(m, C)$ (`--dof`, default 10:
   heavier tails than the posterior, so the weights have finite variance; effective
   sample size ~40%), `--draws` draws in chunks:
   $\\hat Z = \\frac1N\\sum_i \\gamma(w_i)/q(w_i)$, with standard error
   $\\mathrm{se}(\\log\\hat Z) = \\sqrt{\\widehat{\\mathrm{Var}}(w)/N}/\\hat Z$ (delta method), and the
   spread of per-chunk estimates as a check of that error.
4. Cross-checks by independent estimators: importance sampling from the Gaussian
   $\\mathcal N(m, 1.2^2 C)$ (another family, other draws), the pilot run's own estimate,
   and the Laplace value itself (biased).

The result goes to `plugins/sdekit_numpyro/data/logistic_breast_cancer_log_Z.json`, which
the target `logistic-breast-cancer` reads as its `log_Z`.
"""

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.optimize import minimize  # noqa: E402
from jax.scipy.special import gammaln  # noqa: E402

from sdekit_numpyro import REFERENCE_FILE, LogisticRegression, breast_cancer_data  # noqa: E402


def laplace(target: LogisticRegression):
    """Mode, Hessian of -log gamma there, and the Laplace estimate of log Z."""
    neg = lambda w: -target.log_prob(w)  # noqa: E731
    result = minimize(neg, jnp.zeros(target.dim), method="BFGS", options={"gtol": 1e-10})
    mode = result.x
    grad_norm = float(jnp.linalg.norm(jax.grad(neg)(mode)))
    H = jax.hessian(neg)(mode)
    _, log_det = jnp.linalg.slogdet(H)
    log_Z = -float(result.fun) + 0.5 * target.dim * np.log(2 * np.pi) - 0.5 * float(log_det)
    return mode, H, log_Z, {"bfgs_iterations": int(result.nit), "bfgs_evaluations":
                            int(result.nfev), "grad_norm_at_mode": grad_norm}


def student_t_draws(key, mode, chol, dof: float, n: int):
    """`n` draws from t_dof(mode, chol chol^T) and their log-densities."""
    d = mode.shape[0]
    kz, kg = jax.random.split(key)
    z = jax.random.normal(kz, (n, d))
    g = 2.0 * jax.random.gamma(kg, dof / 2.0, (n,))  # chi-square with dof degrees of freedom
    w = mode + (z @ chol.T) * jnp.sqrt(dof / g)[:, None]
    u = jax.scipy.linalg.solve_triangular(chol, (w - mode).T, lower=True).T
    maha = jnp.sum(u**2, axis=1)
    log_q = (gammaln((dof + d) / 2) - gammaln(dof / 2) - 0.5 * d * jnp.log(dof * jnp.pi)
             - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * (dof + d) * jnp.log1p(maha / dof))
    return w, log_q


def gaussian_draws(key, mode, chol, n: int):
    d = mode.shape[0]
    z = jax.random.normal(key, (n, d))
    w = mode + z @ chol.T
    log_q = (-0.5 * jnp.sum(z**2, axis=1) - jnp.sum(jnp.log(jnp.diag(chol)))
             - 0.5 * d * jnp.log(2 * jnp.pi))
    return w, log_q


def importance_sampling(target, draw, key, n: int, chunk: int) -> dict:
    """log Z-hat from `n` draws of `draw(key, chunk) -> (w, log_q)`, in chunks."""
    log_prob = jax.vmap(target.log_prob)

    @jax.jit
    def chunk_stats(k):
        w, log_q = draw(k, chunk)
        log_w = log_prob(w) - log_q
        return (jax.nn.logsumexp(log_w), jax.nn.logsumexp(2 * log_w), jnp.max(log_w),
                jnp.sum(~jnp.isfinite(log_w)))

    n_chunks = int(np.ceil(n / chunk))
    stats = [chunk_stats(k) for k in jax.random.split(key, n_chunks)]
    lse1, lse2, mx, bad = (np.array([s[i] for s in stats]) for i in range(4))
    if bad.sum():
        raise RuntimeError(f"{int(bad.sum())} non-finite log-weights")
    N = n_chunks * chunk
    log_Z = float(jax.nn.logsumexp(lse1) - np.log(N))
    log_m2 = float(jax.nn.logsumexp(lse2) - np.log(N))  # log mean(w^2)
    rel_var = np.exp(log_m2 - 2 * log_Z) - 1.0  # Var(w) / Z^2
    se = float(np.sqrt(rel_var / N))
    chunk_log_Z = lse1 - np.log(chunk)
    chunk_se = (float(np.std(np.exp(chunk_log_Z - log_Z), ddof=1) / np.sqrt(n_chunks))
                if n_chunks > 1 else None)
    return {
        "log_Z": log_Z, "standard_error": se, "draws": N, "chunks": n_chunks,
        "ess_fraction": float(1.0 / (1.0 + rel_var)),
        "max_weight_fraction": float(np.exp(np.max(mx) - log_Z - np.log(N))),
        "standard_error_from_chunk_spread": chunk_se,
    }


def pilot_moments(target, mode, chol, key, n: int):
    """Self-normalised posterior mean and covariance from `n` draws of t_5(mode, chol chol^T)."""
    w, log_q = student_t_draws(key, mode, chol, 5.0, n)
    log_w = jax.vmap(target.log_prob)(w) - log_q
    p = jnp.exp(log_w - jax.nn.logsumexp(log_w))
    mean = p @ w
    cov = (w - mean).T @ ((w - mean) * p[:, None])
    return mean, 0.5 * (cov + cov.T), float(1.0 / jnp.sum(p**2) / n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=float, default=3e6, help="Student-t draws (default 3e6)")
    p.add_argument("--check-draws", type=float, default=5e5,
                   help="Gaussian draws for the cross-check (default 5e5)")
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--pilot-draws", type=float, default=2e5, help="pilot draws (default 2e5)")
    p.add_argument("--dof", type=float, default=10.0, help="Student-t degrees of freedom")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REFERENCE_FILE)
    p.add_argument("--dry-run", action="store_true", help="print, write nothing")
    args = p.parse_args()

    X, y = breast_cancer_data()
    target = LogisticRegression(X, y)
    t0 = time.perf_counter()
    mode, H, laplace_log_Z, opt = laplace(target)
    cov = jnp.linalg.inv(H)
    chol = jnp.linalg.cholesky(0.5 * (cov + cov.T))
    key = jax.random.PRNGKey(args.seed)
    pilot = importance_sampling(
        target, lambda k, n: student_t_draws(k, mode, chol, 5.0, n),
        jax.random.fold_in(key, 2), int(args.pilot_draws), int(args.pilot_draws),
    )
    mean, post_cov, _ = pilot_moments(target, mode, chol, jax.random.fold_in(key, 2),
                                      int(args.pilot_draws))
    post_chol = jnp.linalg.cholesky(post_cov)
    main_run = importance_sampling(
        target, lambda k, n: student_t_draws(k, mean, post_chol, args.dof, n),
        jax.random.fold_in(key, 0), int(args.draws), args.chunk,
    )
    check = importance_sampling(
        target, lambda k, n: gaussian_draws(k, mean, 1.2 * post_chol, n),
        jax.random.fold_in(key, 1), int(args.check_draws), args.chunk,
    )
    seconds = time.perf_counter() - t0
    diff = main_run["log_Z"] - check["log_Z"]
    z = diff / np.hypot(main_run["standard_error"], check["standard_error"])
    result = {
        "target": "logistic-breast-cancer",
        "log_Z": main_run["log_Z"],
        "standard_error": main_run["standard_error"],
        "method": (
            f"importance sampling from a multivariate Student-t (dof {args.dof:g}) with the "
            f"posterior mean and covariance of a pilot importance-sampling run "
            f"({int(args.pilot_draws)} draws from a Student-t (dof 5) at the BFGS mode with "
            f"the inverse Hessian of -log gamma as scale matrix, the Laplace fit); float64; "
            f"standard error by the delta method"
        ),
        "log_density_evaluations": (main_run["draws"] + pilot["draws"] + check["draws"]
                                    + opt["bfgs_evaluations"]),
        "proposal": {"family": "student-t", "dof": args.dof, **main_run},
        "optimisation": opt,
        "cross_check": {
            "method": "importance sampling from N(m, 1.2^2 C) (pilot mean m and "
                      "covariance C), independent draws",
            **check,
            "difference": diff,
            "difference_in_standard_errors": float(z),
        },
        "pilot": {"method": "importance sampling from t_5(mode, H^-1), the Laplace fit",
                  **pilot},
        "laplace_log_Z": laplace_log_Z,
        "data": ("sklearn.datasets.load_breast_cancer: 569 x 30 features standardised "
                 "(population std), intercept column prepended (d = 31), y = target (1 = benign)"),
        "prior": "w ~ N(0, I_31)",
        "seed": args.seed,
        "seconds": seconds,
        "command": "python benchmarks/logistic_reference.py " + " ".join(sys.argv[1:]),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
    }
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if not args.dry_run:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
