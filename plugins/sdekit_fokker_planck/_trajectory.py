r"""Density trajectories of score-driven generative processes in $d \le 2$, and their L2 tracking error.

A score $s$ and a process define two generative dynamics in generative time
$\tau = t_{\max} - t$: the reverse SDE, drift $-f + g^2 s$ and diffusion $g$, and the
probability-flow ODE, drift $-f + \tfrac12 g^2 s$ and no diffusion. Their densities
along the way are computed either on a grid by the finite-volume solver (`"grid"`; the ODE
by upwind transport, first order and numerically diffusive), or by a Gaussian kernel
density estimate of simulated particles (`"kde"`, Euler / Euler–Maruyama).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import sdekit
from sdekit import AbstractProcess, AbstractScore

from ._fv import FokkerPlanck, Grid

KINDS = ("sde", "ode")


class GenerativeDrift(eqx.Module):
    r"""$b(\tau, x) = -f(t, x) + c\,g(t)^2 s(t, x)$ at $t = t_{\max} - \tau$; $c = 1$ (SDE) or $\tfrac12$ (ODE)."""

    score: AbstractScore
    process: AbstractProcess
    coef: float

    def __call__(self, tau, x):
        t = self.process.t_max - tau
        return -self.process.drift(t, x) + self.coef * self.process.diffusion(t) ** 2 * self.score(t, x)


class GenerativeDiffusion(eqx.Module):
    r"""$g(t_{\max} - \tau)$: the diffusion of the generative SDE in generative time."""

    process: AbstractProcess

    def __call__(self, tau):
        return self.process.diffusion(self.process.t_max - tau)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def generative_fokker_planck(score, process, grid: Grid, kind: str = "sde", **options) -> FokkerPlanck:
    """The `FokkerPlanck` equation of the reverse SDE (`kind="sde"`) or PF-ODE (`"ode"`), in generative time."""
    _check_kind(kind)
    coef = 1.0 if kind == "sde" else 0.5
    diffusion = GenerativeDiffusion(process) if kind == "sde" else 0.0
    return FokkerPlanck(GenerativeDrift(score, process, coef), diffusion, grid, **options)


def model_densities_grid(
    score: AbstractScore,
    process: AbstractProcess,
    grid: Grid,
    times: Float[Array, " K"],
    *,
    kind: str = "sde",
    substeps: int = 50,
    **options,
) -> Float[Array, "K *cells"]:
    r"""The model's densities at forward times `times` (decreasing from `t_max`), on `grid`.

    Starts from the process's prior at `t_max` (grid-normalised; a `ValueError` if its std
    is below two cells, as for `pbm` at its default `t_max` close to `T`); each interval
    between consecutive `times` takes `substeps` implicit Euler steps. `options` go to
    `FokkerPlanck`.
    """
    r = float(process.reference_std(process.t_max))
    if r < 2 * max(grid.widths):
        raise ValueError(
            f"the prior at t_max={process.t_max} has std {r:.3g}, below two grid cells "
            f"({max(grid.widths):.3g} each): the grid cannot hold it. Use a finer grid or a "
            f"process with an earlier t_max (for pbm, e.g. t_max=0.99 * T)"
        )
    fp = generative_fokker_planck(score, process, grid, kind, **options)
    rho0 = grid.density(process.prior_log_prob)
    taus = process.t_max - jnp.asarray(times, rho0.dtype)
    rhos = fp.solve(rho0, jnp.concatenate([jnp.zeros(1, rho0.dtype), taus]), substeps)
    return rhos[1:]


@eqx.filter_jit
def simulate(
    key: PRNGKeyArray,
    score: AbstractScore,
    process: AbstractProcess,
    x0: Float[Array, "n d"],
    times: Float[Array, " K"],
    *,
    kind: str = "sde",
    substeps: int = 50,
) -> Float[Array, "K n d"]:
    """Particles of the reverse SDE (Euler–Maruyama) or PF-ODE (Euler) from `x0` at `t_max`, saved at `times`.

    Each interval between consecutive times (from `t_max`) takes `substeps` uniform steps
    of `sdekit.simulate`, whose key is one of `len(times)` keys split from `key`.
    """
    _check_kind(kind)
    drift = GenerativeDrift(score, process, 1.0 if kind == "sde" else 0.5)

    def kernel(t_a, t_b, x):
        h = t_a - t_b
        std = process.diffusion(t_a) * jnp.sqrt(h) if kind == "sde" else jnp.zeros((), x.dtype)
        return x + h * drift(process.t_max - t_a, x), std

    ends = jnp.concatenate([jnp.full(1, process.t_max), jnp.asarray(times)])
    u = jnp.linspace(0.0, 1.0, substeps + 1)

    def interval(x, inputs):
        t0, t1, k = inputs
        x = sdekit.simulate(k, x, t0 + (t1 - t0) * u, kernel).x
        return x, x

    keys = jax.random.split(key, ends.shape[0] - 1)
    _, xs = jax.lax.scan(interval, x0, (ends[:-1], ends[1:], keys))
    return xs


def kde_density(grid: Grid, x: Float[Array, "n d"], bandwidth: float | None = None) -> Array:
    r"""Gaussian kernel density estimate of the particles `x` at the cell centres of `grid`.

    `bandwidth`: the kernel's standard deviation; `None` is Scott's rule per axis,
    $h_j = \hat\sigma_j\, n^{-1/(d+4)}$.
    """
    n, d = x.shape
    h = jnp.std(x, axis=0) * n ** (-1.0 / (d + 4)) if bandwidth is None else jnp.full(d, bandwidth)

    def at(p):
        z = (p - x) / h
        log_k = -0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(h)) - 0.5 * d * jnp.log(2 * jnp.pi)
        return jnp.exp(jax.nn.logsumexp(log_k) - jnp.log(n))

    return grid.evaluate(at)


def true_densities(
    reference: Callable | None,
    process: AbstractProcess,
    grid: Grid,
    times: Float[Array, " K"],
    target_log_prob: Callable | None = None,
    substeps: int = 50,
) -> Float[Array, "K *cells"]:
    r"""The true marginals $p_t$ at `times` on the grid.

    With `reference(t, x) = log p_t(x)` (the exact mixture score's `log_prob`): analytic.
    Otherwise the forward process's Fokker–Planck equation solved on the grid from the
    grid-normalised target density `target_log_prob`, started at `t = 0`.
    """
    times = jnp.asarray(times)
    if reference is not None:
        return jax.vmap(lambda t: jnp.exp(grid.evaluate(lambda x: reference(t, x))))(times)
    if target_log_prob is None:
        raise ValueError("true_densities needs reference(t, x) = log p_t(x) or a target_log_prob")
    fp = FokkerPlanck(process.drift, process.diffusion, grid)
    order = jnp.argsort(times)
    ts = jnp.concatenate([jnp.zeros(1, times.dtype), times[order]])
    rhos = fp.solve(grid.density(target_log_prob), ts, substeps)[1:]
    return rhos[jnp.argsort(order)]
