"""A score error small in L2 but large in Lipschitz constant (REPRODUCTIONS.md R0.2): SDE against ODE sampling.

    python benchmarks/oscillating_score_error.py

Data π = U[−1, 1]. OU `dX = −X dt + √2 dW` (`vp` with β ≡ 2), T = 6, t_min = 1e-3, exact
score of p_t in closed form (erf). Imperfect score s + ε sin(ω x), ε = 0.5,
ω ∈ {2, 8, 32, 128}. The SDE's density at t_min by the finite-volume solver; the ODE's by
characteristics plus the log-Jacobian (RK4 on a time grid dense near t_min, from a fine
grid of prior points; in 1-d the flow is monotone, so ∫q², ∫qp are expectations under
the prior). L2 error to p_{t_min}.

Pass: SDE error ≤ 0.2 and non-increasing in ω; ODE error ≥ 10× the SDE error for every ω.
Prints the table; writes `benchmarks/results/oscillating_score_error.json` and `oscillating_score_error.png`.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

import sdekit
from sdekit import AbstractScore
from sdekit_fokker_planck import Grid, SinePerturbedScore, model_densities_grid

RESULTS = Path(__file__).parent / "results"
OMEGAS = (2.0, 8.0, 32.0, 128.0)
EPS = 0.5


def _log_diff_ndtr(b, c):
    """log(Φ(b) − Φ(c)) for b > c, stably in both tails."""
    # upper tail: Φ(b) − Φ(c) = Φ(−c) − Φ(−b)
    flip = (b + c) > 0
    hi, lo = jnp.where(flip, -c, b), jnp.where(flip, -b, c)
    lh, ll = log_ndtr(hi), log_ndtr(lo)
    return lh + jnp.log1p(-jnp.exp(ll - lh))


class UniformScore(AbstractScore):
    """Exact score and log-density of p_t for π = U[−1, 1] under a process with Gaussian transitions."""

    process: sdekit.AbstractProcess

    def log_prob(self, t, x):
        a, s = self.process.marginal(t)
        x = x[0]
        return _log_diff_ndtr((x + a) / s, (x - a) / s) - jnp.log(2 * a)

    def __call__(self, t, x):
        return jax.grad(self.log_prob, argnums=1)(t, x)


def _rk4_flow(score, process, x_T, steps):
    """PF-ODE from t_max to t_min for 1-d points `x_T`, with log|dx/dx_T|; RK4 in t."""
    u = jnp.linspace(0.0, 1.0, steps + 1)
    ts = process.t_max - (process.t_max - process.t_min) * (1 - (1 - u) ** 2)  # dense near t_min

    def v(t, x):
        g2 = process.diffusion(t) ** 2
        return process.drift(t, x) - 0.5 * g2 * score(t, x)

    def rhs(t, state):
        x, _ = state
        val, dv = jax.jvp(lambda y: v(t, y), (x,), (jnp.ones_like(x),))
        return val, dv[0]

    def step(state, tt):
        t0, t1 = tt
        h = t1 - t0
        k1 = rhs(t0, state)
        k2 = rhs(t0 + h / 2, jax.tree.map(lambda s, k: s + h / 2 * k, state, k1))
        k3 = rhs(t0 + h / 2, jax.tree.map(lambda s, k: s + h / 2 * k, state, k2))
        k4 = rhs(t1, jax.tree.map(lambda s, k: s + h * k, state, k3))
        new = jax.tree.map(lambda s, a, b, c, d: s + h / 6 * (a + 2 * b + 2 * c + d), state, k1, k2, k3, k4)
        return new, None

    def one(x):
        (x_end, logj), _ = jax.lax.scan(step, (x[None], jnp.zeros(())), (ts[:-1], ts[1:]))
        return x_end[0], logj

    return jax.jit(jax.vmap(one))(x_T)


def ode_l2(score, exact, process, n: int, steps: int) -> float:
    """‖q_ODE − p_{t_min}‖₂ with q from characteristics; overflow reported as inf."""
    r = process.reference_std(process.t_max)
    x_T = jnp.linspace(-10 * r, 10 * r, n)
    log_w = jax.vmap(process.prior_log_prob)(x_T[:, None]) + jnp.log(x_T[1] - x_T[0])
    x, logj = _rk4_flow(score, process, x_T, steps)
    log_q = jax.vmap(process.prior_log_prob)(x_T[:, None]) - logj  # density at x(x_T)
    log_p = jax.vmap(lambda y: exact.log_prob(process.t_min, y[None]))(x)
    int_q2 = jax.nn.logsumexp(log_w + log_q)  # ∫ q² = E_prior[q(x)]
    int_qp = jax.nn.logsumexp(log_w + log_p)  # ∫ q p = E_prior[p(x)]
    grid = Grid([-4.0], [4.0], 20_000)
    int_p2 = jnp.log(jnp.sum(jnp.exp(2 * grid.evaluate(lambda y: exact.log_prob(process.t_min, y)))) * grid.cell_volume)
    # ‖q − p‖² = ∫q² − 2∫qp + ∫p², in log space where it is large
    big = jnp.maximum(int_q2, jnp.maximum(int_qp, int_p2))
    val = jnp.exp(int_q2 - big) - 2 * jnp.exp(int_qp - big) + jnp.exp(int_p2 - big)
    log10_l2 = 0.5 * (jnp.log(jnp.maximum(val, 0.0)) + big) / jnp.log(10.0)
    return float(log10_l2)


def run(cells: int = 4000, steps: int = 4000, ode_points: int = 4001, ode_steps: int = 4000) -> dict:
    rows = []
    with jax.enable_x64(True):
        process = sdekit.create("process", "vp", beta_min=2.0, beta_max=2.0, T=6.0, t_min=1e-3)
        exact = UniformScore(process)
        grid = Grid([-5.0], [5.0], cells)
        p_min = jnp.exp(grid.evaluate(lambda x: exact.log_prob(process.t_min, x)))
        u = jnp.linspace(0.0, 1.0, steps + 1)[1:]
        times = process.t_max - (process.t_max - process.t_min) * (1 - (1 - u) ** 2)
        base = float(grid.l2(model_densities_grid(exact, process, grid, times, substeps=1)[-1], p_min))
        for omega in OMEGAS:
            score = SinePerturbedScore(exact, jnp.asarray(EPS), jnp.asarray(omega))
            q = model_densities_grid(score, process, grid, times, substeps=1)[-1]
            sde = float(grid.l2(q, p_min))
            log10_ode = ode_l2(score, exact, process, ode_points, ode_steps)
            rows.append({"omega": omega, "sde_l2": sde, "ode_log10_l2": log10_ode,
                         "ode_l2": float(10.0**log10_ode) if log10_ode < 300 else float("inf")})
    sde = [r["sde_l2"] for r in rows]
    checks = {
        "sde_below_0.2": bool(max(sde) <= 0.2),
        "sde_non_increasing": bool(np.all(np.diff(sde) <= 1e-12)),
        "ode_at_least_10x_sde": bool(all(r["ode_log10_l2"] >= np.log10(10 * r["sde_l2"]) for r in rows)),
    }
    return {"setup": {"epsilon": EPS, "omegas": OMEGAS, "cells": cells, "steps": steps, "box": [-5, 5],
                      "ode_points": ode_points, "ode_steps": ode_steps},
            "grid_error_exact_score": base, "rows": rows, "checks": checks, "claim_held": all(checks.values())}


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    om = [r["omega"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.semilogx(om, np.log10([r["sde_l2"] for r in result["rows"]]), "o-", base=2, label="SDE (FV)")
    ax.semilogx(om, [r["ode_log10_l2"] for r in result["rows"]], "s-", base=2, label="ODE (characteristics)")
    ax.axhline(np.log10(result["grid_error_exact_score"]), color="gray", ls=":", label="grid error, exact score")
    ax.set_xlabel("ω")
    ax.set_ylabel("log10 L2 error to p_tmin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=4000, help="finite-volume cells on [-5, 5]")
    p.add_argument("--steps", type=int, default=4000, help="the solver's time steps")
    p.add_argument("--ode-points", type=int, default=4001, help="prior points of the characteristics")
    p.add_argument("--ode-steps", type=int, default=4000, help="RK4 steps of the characteristics")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    result = run(args.cells, args.steps, args.ode_points, args.ode_steps)
    print(f"grid error with the exact score: {result['grid_error_exact_score']:.3g}")
    print(f"{'omega':>6}{'SDE L2':>12}{'ODE log10 L2':>14}")
    for r in result["rows"]:
        print(f"{r['omega']:6g}{r['sde_l2']:12.4g}{r['ode_log10_l2']:14.4g}")
    print("checks:", result["checks"], "claim held:", result["claim_held"])
    args.out.mkdir(exist_ok=True, parents=True)
    (args.out / "oscillating_score_error.json").write_text(json.dumps(result, indent=2))
    _plot(result, args.out / "oscillating_score_error.png")


if __name__ == "__main__":
    main()
