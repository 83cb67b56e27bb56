import dataclasses
import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from scipy import integrate

from sdekit import AbstractTarget


def _log_mixture(x, locs, scales, log_weights, xp):
    """`log sum_k w_k N(x; loc_k, scale_k^2)` elementwise, with `xp` numpy or jax.numpy."""
    x = x[..., None]
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    comps = log_weights - 0.5 * ((x - locs) / scales) ** 2 - xp.log(scales) - half_log_2pi
    top = xp.max(comps, axis=-1, keepdims=True)
    return (top + xp.log(xp.sum(xp.exp(comps - top), axis=-1, keepdims=True)))[..., 0]


@dataclasses.dataclass(frozen=True)
class Envelope1D:
    r"""Exact rejection sampler for a 1-D density $\propto e^{f(x)}$ (a `log_f` polynomial).

    The proposal is a Gaussian mixture at the modes of $f$ and `log_M` bounds
    $f - \log q$ everywhere (see `build_envelope`), so accepted draws are exact.
    """

    log_f: Callable
    locs: tuple[float, ...]
    scales: tuple[float, ...]
    log_weights: tuple[float, ...]
    log_M: float
    log_Z: float  # log of the integral of exp(log_f), by quadrature

    @property
    def acceptance(self) -> float:
        """The probability that one proposal is accepted, $Z / M$."""
        return math.exp(self.log_Z - self.log_M)

    def log_q(self, x, xp=np):
        return _log_mixture(
            x, xp.asarray(self.locs), xp.asarray(self.scales), xp.asarray(self.log_weights), xp
        )

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Independent exact draws of the given shape; jit-able (the shape is static).

        Proposes in vectorised batches sized to fill `shape` in one round with high
        probability, and loops (`lax.while_loop`) until every slot holds an accepted draw.
        """
        return _rejection_sample(self, key, tuple(shape))

    def _sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        n = math.prod(shape)
        batch = int(math.ceil(1.2 * n / self.acceptance)) + 64
        locs = jnp.asarray(self.locs)
        scales = jnp.asarray(self.scales)
        log_weights = jnp.asarray(self.log_weights)

        def body(state):
            key, buf, count = state
            key, k_comp, k_x, k_u = jax.random.split(key, 4)
            comp = jax.random.categorical(k_comp, log_weights, shape=(batch,))
            x = locs[comp] + scales[comp] * jax.random.normal(k_x, (batch,))
            log_ratio = self.log_f(x) - self.log_q(x, jnp) - self.log_M
            accept = jnp.log(jax.random.uniform(k_u, (batch,))) <= log_ratio
            # accepted draws fill the next free slots; those past the end are dropped
            slot = jnp.where(accept, count + jnp.cumsum(accept, dtype=jnp.int32) - 1, n)
            buf = buf.at[slot].set(x, mode="drop")
            return key, buf, jnp.minimum(count + jnp.sum(accept, dtype=jnp.int32), n)

        init = (key, jnp.zeros((n,)), jnp.zeros((), dtype=jnp.int32))
        _, buf, _ = jax.lax.while_loop(lambda state: state[2] < n, body, init)
        return buf.reshape(shape)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _rejection_sample(envelope: Envelope1D, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    return envelope._sample(key, shape)  # compiled once per (envelope, shape)


def build_envelope(log_f: Callable, lo: float, hi: float, n_grid: int = 120_001) -> Envelope1D:
    """Fit a Gaussian-mixture proposal to `exp(log_f)` and bound the ratio, in float64.

    `log_f` must be a polynomial of even degree with a negative leading coefficient and
    its mass essentially inside `[lo, hi]`. Steps:

    1. $\\log Z$ by `scipy.integrate.quad` over the real line.
    2. One component per local maximum of `log_f` on a grid, weighted by the mass of its
       basin, with std `c` times the Laplace std; `c` maximises the acceptance rate.
    3. $\\log M$: on each grid cell, the larger endpoint value of $g = f - \\log q$ plus
       `h` times twice the largest slope of $g$ on the cell and its neighbours (a
       Lipschitz bound for the cell), maximised over cells, plus a 1 % margin.
    4. Checks (a `RuntimeError` if one fails): $g \\le \\log M$ on an offset grid three
       times finer; beyond `[lo, hi]`, $g$ is below an upper bound (using the outermost
       component alone for $q$) that is below $\\log M$ at the ends and decreasing on a
       log-spaced grid out to `1000 * max(|lo|, |hi|)`; the bound is a polynomial with a
       negative leading term, so it stays decreasing beyond.
    """
    x = np.linspace(lo, hi, n_grid)
    h = x[1] - x[0]
    lf = log_f(x)
    top = float(lf.max())

    mass, _ = integrate.quad(
        lambda t: math.exp(log_f(t) - top), -np.inf, np.inf, epsabs=0.0, epsrel=1e-12, limit=200
    )
    log_Z = top + math.log(mass)

    peaks = np.flatnonzero((lf[1:-1] > lf[:-2]) & (lf[1:-1] >= lf[2:])) + 1
    modes = x[peaks]
    eps = 1e-4
    curvature = -(log_f(modes + eps) - 2 * log_f(modes) + log_f(modes - eps)) / eps**2
    laplace_std = 1.0 / np.sqrt(curvature)
    density = np.exp(lf - top)
    cuts = [int(np.argmin(lf[a:b])) + a for a, b in zip(peaks[:-1], peaks[1:])]
    edges = [0, *cuts, n_grid]
    cell_mass = 0.5 * h * (density[1:] + density[:-1])  # trapezoid rule
    masses = np.array([cell_mass[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
    log_weights = np.log(masses / masses.sum())

    def log_ratio(points, c):
        return log_f(points) - _log_mixture(points, modes, c * laplace_std, log_weights, np)

    coarse = x[::20]
    factors = np.linspace(0.8, 4.0, 65)
    best = factors[np.argmin([log_ratio(coarse, c).max() for c in factors])]
    scales = best * laplace_std

    g = log_ratio(x, best)
    slope = np.abs(np.diff(g)) / h
    neighbours = np.maximum(np.r_[slope[1:], slope[-1]], np.r_[slope[0], slope[:-1]])
    local = np.maximum(slope, neighbours)
    log_M = float(np.max(np.maximum(g[:-1], g[1:]) + 2 * h * local)) + math.log(1.01)

    fine = lo + (np.arange(3 * (n_grid - 1)) + 0.5) * (h / 3)
    if not log_ratio(fine, best).max() <= log_M:
        raise RuntimeError("rejection envelope violated on the check grid")
    far = 1000 * max(abs(lo), abs(hi))
    for end, k, sign in ((hi, int(np.argmax(modes)), 1.0), (lo, int(np.argmin(modes)), -1.0)):
        t = sign * np.geomspace(abs(end), far, 4001)
        bound = (
            log_f(t)
            - log_weights[k]
            + 0.5 * ((t - modes[k]) / scales[k]) ** 2
            + math.log(scales[k] * math.sqrt(2 * math.pi))
        )
        if not (bound[0] <= log_M and np.all(np.diff(bound) < 0)):
            raise RuntimeError("rejection envelope tail bound failed")
    env = Envelope1D(
        log_f, tuple(modes.tolist()), tuple(scales.tolist()), tuple(log_weights.tolist()), log_M, log_Z
    )
    if env.acceptance < 0.25:
        raise RuntimeError(f"rejection envelope too loose (acceptance {env.acceptance:.3f})")
    return env


def _double_well(x):
    """Log-density of one coordinate of many-well-54, unnormalised."""
    return -((x**2 - 4.0) ** 2)


def _asymmetric_well(a):
    """Log-density of the first coordinate of a many-well-32 pair, unnormalised."""
    return -(a**4) + 6.0 * a**2 + 0.5 * a


@functools.cache
def double_well_envelope() -> Envelope1D:
    return build_envelope(_double_well, -6.0, 6.0)


@functools.cache
def asymmetric_well_envelope() -> Envelope1D:
    return build_envelope(_asymmetric_well, -6.0, 6.0)


class ManyWell54(AbstractTarget):
    r"""Many-well in d = 5: $\log\gamma(x) = -\sum_{i=1}^{5} (x_i^2 - 4)^2$, 32 modes; $\log Z \approx -0.5411$.

    The coordinates are independent double wells at $\pm 2$. $\log Z$ is five times the log
    of a 1-D integral computed by quadrature (float64); exact samples by rejection
    sampling of the 1-D marginal. No options.
    """

    dim: int = eqx.field(static=True)

    def __init__(self):
        self.dim = 5
        double_well_envelope()  # quadrature and envelope once, at construction

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return jnp.sum(_double_well(x))

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return double_well_envelope().sample(key, (n, self.dim))

    @property
    def log_Z(self) -> float:
        return self.dim * double_well_envelope().log_Z


class ManyWell32(AbstractTarget):
    r"""Many-well in d = 32: $\log\gamma(x) = -\sum_{i=0}^{15} E(x_{2i}, x_{2i+1})$, $E(a, b) = a^4 - 6a^2 - \tfrac12 a + \tfrac12 b^2$; $\log Z \approx 164.6957$.

    Sixteen independent pairs, each with two asymmetric wells in $a$ ($2^{16}$ modes) and
    $b \sim \mathcal N(0, 1)$. $\log Z$ by 1-D quadrature (float64); exact samples by
    rejection sampling of the $a$-marginal. No options.
    """

    dim: int = eqx.field(static=True)

    def __init__(self):
        self.dim = 32
        asymmetric_well_envelope()

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        a, b = x[0::2], x[1::2]
        return jnp.sum(_asymmetric_well(a) - 0.5 * b**2)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        k_a, k_b = jax.random.split(key)
        pairs = self.dim // 2
        a = asymmetric_well_envelope().sample(k_a, (n, pairs))
        b = jax.random.normal(k_b, (n, pairs))
        return jnp.stack([a, b], axis=-1).reshape(n, self.dim)

    @property
    def log_Z(self) -> float:
        pairs = self.dim // 2
        return pairs * (asymmetric_well_envelope().log_Z + 0.5 * math.log(2 * math.pi))
