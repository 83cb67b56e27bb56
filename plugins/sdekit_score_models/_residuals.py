r"""Fokker–Planck residuals of a learned log-density or score, for one point $(t, x)$.

Under the forward SDE $dY = f(t, Y)\,dt + g(t)\,dW$ the marginals $p_t$ satisfy
$\partial_t p = -\nabla\cdot(f p) + \frac12 g^2 \Delta p$. Written for $u = \log p_t$ and for
$s = \nabla u$ (DESIGN.md §2):

- log-density residual: $R_u = \partial_t u + \nabla\cdot f + f\cdot\nabla u - \frac12 g^2(\Delta u + |\nabla u|^2)$;
- score residual: $R_s = \partial_t s - \nabla_x\big[\frac12 g^2(\nabla\cdot s + |s|^2) - f\cdot s - \nabla\cdot f\big]$.

Both vanish for the exact marginals. Divergences and Laplacians are exact (a Jacobian
trace, $d$ Jacobian-vector products) with `probe=None`, or Hutchinson's unbiased estimate
$v^\top J v$ with a given probe $v$ ($\mathbb E[v v^\top] = I$, e.g. Rademacher).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, ScalarLike

from sdekit import AbstractProcess

__all__ = ["divergence", "log_density_residual", "score_residual"]


def divergence(
    fn: Callable[[Array], Array], x: Float[Array, " d"], probe: Float[Array, " d"] | None = None
) -> Float[Array, ""]:
    r"""$\nabla\cdot \mathrm{fn}(x)$: exact with `probe=None`, else Hutchinson's $v^\top J v$."""
    if probe is None:
        return jnp.trace(jax.jacfwd(fn)(x))
    return jnp.dot(probe, jax.jvp(fn, (x,), (probe,))[1])


def log_density_residual(
    potential: Callable[[ScalarLike, Array], Array],
    process: AbstractProcess,
    t: ScalarLike,
    x: Float[Array, " d"],
    probe: Float[Array, " d"] | None = None,
) -> Float[Array, ""]:
    r"""$R_u(t, x)$ for a (possibly unnormalised) log-density `potential(t, x)`.

    It is zero for $u = \log p_t$ exactly; adding a function of $t$ alone to $u$ adds its
    time derivative, so $R_u = 0$ also fixes the normalisation over time.
    """
    t = jnp.asarray(t, dtype=jnp.result_type(x, float))
    du_dt, grad_u = jax.grad(potential, argnums=(0, 1))(t, x)
    laplacian = divergence(lambda y: jax.grad(potential, argnums=1)(t, y), x, probe)
    div_f = divergence(lambda y: process.drift(t, y), x, probe)
    f = process.drift(t, x)
    g2 = process.diffusion(t) ** 2
    return du_dt + div_f + jnp.dot(f, grad_u) - 0.5 * g2 * (laplacian + jnp.dot(grad_u, grad_u))


def score_residual(
    score: Callable[[ScalarLike, Array], Array],
    process: AbstractProcess,
    t: ScalarLike,
    x: Float[Array, " d"],
    probe: Float[Array, " d"] | None = None,
) -> Float[Array, " d"]:
    r"""$R_s(t, x)$ for a score `score(t, x)` (the FP-Diffusion form)."""
    t = jnp.asarray(t, dtype=jnp.result_type(x, float))
    ds_dt = jax.jvp(lambda r: score(r, x), (t,), (jnp.ones_like(t),))[1]
    g2 = process.diffusion(t) ** 2

    def phi(y):
        s = score(t, y)
        div_s = divergence(lambda z: score(t, z), y, probe)
        div_f = divergence(lambda z: process.drift(t, z), y, probe)
        return 0.5 * g2 * (div_s + jnp.dot(s, s)) - jnp.dot(process.drift(t, y), s) - div_f

    return ds_dt - jax.grad(phi)(x)
