r"""Pointwise Fokker–Planck operators: divergences, the score and log-density residuals.

Shared by the `fp-residual` diagnostic (plugin `sdekit_fokker_planck`) and the
Fokker–Planck regulariser of denoising score matching (plugin `sdekit_score_models`):
`from sdekit.fokker_planck import score_fp_residual`.

For the forward SDE $dY = f(t, Y)\,dt + g(t)\,dW$ the marginal $p_t$ solves
$\partial_t p = -\nabla\cdot(f p) + \tfrac12 g^2 \Delta p$, so $u = \log p_t$ and
$s = \nabla u$ solve

- $\partial_t u = -\nabla\cdot f - f\cdot\nabla u + \tfrac12 g^2(\Delta u + |\nabla u|^2)$,
- $\partial_t s = \nabla\big[\tfrac12 g^2(\nabla\cdot s + |s|^2) - f\cdot s - \nabla\cdot f\big]$.

The residuals below are the differences of the two sides, for one point `(t, x)`; callers
`jax.vmap` them. Divergences and Laplacians are exact (a Jacobian trace, `d` forward-mode
passes: small `d`) or Hutchinson estimates $v^\top J v$ with a Rademacher probe $v$. With a
probe, a residual is an *unbiased estimate* of the residual; the square of one estimate is
biased, so `squared_norm_estimate` combines several independent probes into an unbiased
estimate of $\|R\|^2$.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

from sdekit import AbstractProcess

DIVERGENCES = ("exact", "hutchinson")

Field = Callable[[Float[Array, " d"]], Float[Array, " d"]]


def check_divergence(divergence: str, probes: int) -> None:
    """`ValueError` unless `divergence` is known and `probes` is an integer >= 2."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if isinstance(probes, bool) or not (isinstance(probes, int) and probes >= 2):
        raise ValueError(
            f"probes must be an integer >= 2 (two independent probes make |R|^2 unbiased), got {probes!r}"
        )


def divergence(field: Field, x: Float[Array, " d"], probe: Float[Array, " d"] | None = None) -> Scalar:
    r"""$\nabla\cdot F(x)$: the exact Jacobian trace (`probe=None`), or $v^\top J_F(x) v$."""
    return value_and_divergence(field, x, probe)[1]


def value_and_divergence(
    field: Field, x: Float[Array, " d"], probe: Float[Array, " d"] | None = None
) -> tuple[Float[Array, " d"], Scalar]:
    r"""$(F(x), \nabla\cdot F(x))$ from one linearisation of $F$ at $x$: the divergence
    exact (`probe=None`, `d` Jacobian-vector products) or $v^\top J_F(x) v$."""
    value, jvp = jax.linearize(field, x)
    if probe is None:
        return value, jnp.trace(jax.vmap(jvp)(jnp.eye(x.shape[-1], dtype=x.dtype)))
    return value, jnp.dot(probe, jvp(probe))


def laplacian(potential: Callable[[Float[Array, " d"]], Scalar], x, probe=None) -> Scalar:
    r"""$\Delta u(x)$: the exact Hessian trace, or $v^\top H_u(x) v$ with a probe."""
    return divergence(jax.grad(potential), x, probe)


def hutchinson_divergence(
    field: Field, x: Float[Array, " d"], key: PRNGKeyArray, probes: int
) -> tuple[Scalar, Scalar]:
    r"""Hutchinson's estimate of $\nabla\cdot F(x)$ over `probes` Rademacher probes, and its standard error."""
    v = jax.random.rademacher(key, (probes, x.shape[-1])).astype(x.dtype)
    _, jvp = jax.linearize(field, x)
    values = jnp.sum(v * jax.vmap(jvp)(v), axis=-1)
    return jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(probes)


def score_fp_residual(
    score: Callable[[ScalarLike, Float[Array, " d"]], Float[Array, " d"]],
    process: AbstractProcess,
    t: ScalarLike,
    x: Float[Array, " d"],
    probe: Float[Array, " d"] | None = None,
) -> tuple[Float[Array, " d"], Scalar]:
    r"""The score Fokker–Planck residual at one point, and the scale it is measured against.

    $R = \partial_t s - \nabla_x\big[\tfrac12 g^2(\nabla\cdot s + |s|^2) - f\cdot s - \nabla\cdot f\big]$
    (zero for the exact score of the process's marginals). The divergences are exact, or
    Hutchinson estimates with `probe` (then $R$ is an unbiased estimate). The scale is
    $\|\partial_t s\|^2 + \|\nabla[\dots]\|^2$, the size of the two sides, for a relative residual.
    """

    def rhs(y):
        s = score(t, y)
        g2 = process.diffusion(t) ** 2
        div_s = divergence(lambda z: score(t, z), y, probe)
        div_f = divergence(lambda z: process.drift(t, z), y, probe)
        return 0.5 * g2 * (div_s + jnp.dot(s, s)) - jnp.dot(process.drift(t, y), s) - div_f

    t = jnp.asarray(t, x.dtype)
    ds_dt = jax.jvp(lambda tau: score(tau, x), (t,), (jnp.ones_like(t),))[1]
    grad_rhs = jax.grad(rhs)(x)
    return ds_dt - grad_rhs, jnp.dot(ds_dt, ds_dt) + jnp.dot(grad_rhs, grad_rhs)


def log_fp_residual(
    potential: Callable[[ScalarLike, Float[Array, " d"]], Scalar],
    process: AbstractProcess,
    t: ScalarLike,
    x: Float[Array, " d"],
    probe: Float[Array, " d"] | None = None,
) -> tuple[Scalar, Scalar]:
    r"""The log-density Fokker–Planck residual at one point, and its scale.

    $R = \partial_t u + \nabla\cdot f + f\cdot\nabla u - \tfrac12 g^2(\Delta u + |\nabla u|^2)$
    for $u(t, x) \approx \log p_t(x)$ (zero for the exact log-density). It depends on the
    normalisation of $u$ in time: $u + c(t)$ has residual $R + c'(t)$. The scale is the sum
    of the squares of the four terms.
    """
    t = jnp.asarray(t, x.dtype)
    du_dt = jax.jvp(lambda tau: potential(tau, x), (t,), (jnp.ones_like(t),))[1]
    grad_u = jax.grad(lambda y: potential(t, y))(x)
    lap_u = laplacian(lambda y: potential(t, y), x, probe)
    f = process.drift(t, x)
    div_f = divergence(lambda z: process.drift(t, z), x, probe)
    g2 = process.diffusion(t) ** 2
    diffusive = 0.5 * g2 * (lap_u + jnp.dot(grad_u, grad_u))
    transport = div_f + jnp.dot(f, grad_u)
    return du_dt + transport - diffusive, du_dt**2 + transport**2 + diffusive**2


def squared_norm_estimate(estimates: Float[Array, "P ..."]) -> Scalar:
    r"""An unbiased estimate of $\|R\|^2$ from `P >= 2` independent unbiased estimates $\hat R_p$ of $R$.

    $\frac{1}{P(P-1)}\big(\|\sum_p \hat R_p\|^2 - \sum_p \|\hat R_p\|^2\big)$, the mean of
    $\hat R_p\cdot\hat R_q$ over pairs $p \ne q$. It can be negative when $R \approx 0$.
    """
    P = estimates.shape[0]
    flat = estimates.reshape(P, -1)
    total = jnp.sum(flat, axis=0)
    return (jnp.dot(total, total) - jnp.sum(flat**2)) / (P * (P - 1))
