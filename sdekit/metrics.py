r"""Metrics: pure functions of samples, log-weights and (where needed) a `GaussianMixture`.

The one implementation every diagnostic, plugin and benchmark shares:
`import sdekit.metrics` or `from sdekit.metrics import mmd`.

Everything here is `jax.jit`-able except `w2`, which solves an assignment problem on the
host with scipy. Sample sizes, chunk sizes and point caps are static (they fix shapes).

Weights (log-weights $\log w_i = \log\gamma(x_i) - \log q(x_i)$):

- `log_Z`: $\log \frac1N\sum_i w_i$, the log of an unbiased estimate of $Z$.
- `elbo`: $\frac1N\sum_i \log w_i \le \log Z$ (in expectation).
- `eubo`: the same mean, but over log-weights of *target* trajectories: $\ge \log Z$.
- `ess`: normalised effective sample size $(\sum_i w_i)^2 / (N \sum_i w_i^2) \in (0, 1]$.
- `pareto_k`: the Pareto $\hat k$ of the weights' tail (PSIS, ArviZ; host, not jitted).
- `unique_fraction`: the fraction of distinct samples (after resampling, duplicates).

An estimate from weights is not to be trusted when `ess` is below `MIN_ESS` or
`pareto_k` above `MAX_PARETO_K`; `sdekit.run` then warns.

Samples against reference samples:

- `mmd`: unbiased MMD$^2$, Gaussian kernel, median-heuristic bandwidth, chunked.
- `sinkhorn`: entropic OT cost (ott-jax), squared-euclidean cost.
- `w2` (exact, host) and `sliced_w2` (jit).

Samples against a mixture: `mode_coverage` and `emc`.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._mixture import GaussianMixture
from ._sampler import log_Z_estimate

__all__ = [
    "MAX_PARETO_K", "MIN_ESS", "W2_MAX_POINTS", "SinkhornResult", "elbo", "emc", "ess", "eubo",
    "log_Z", "mmd", "mode_counts", "mode_coverage", "pareto_k", "sinkhorn", "sliced_w2",
    "unique_fraction", "w2",
]

#: Below this normalised ESS a weighted estimate rests on too few samples to be trusted
#: (1%: fewer than 100 effective samples of 10 000).
MIN_ESS = 0.01
#: Above this Pareto k-hat the importance-weight tail is too heavy for a reliable
#: estimate (Vehtari et al., "Pareto smoothed importance sampling", 2024).
MAX_PARETO_K = 0.7
#: The most points per side `w2` accepts: the assignment problem is O(N^3) time, O(N^2) memory.
W2_MAX_POINTS = 5000


# --------------------------------------------------------------------------------------
# importance weights


@jax.jit
def log_Z(log_weights: Float[ArrayLike, " n"]) -> Float[Array, ""]:
    r"""$\log \frac1N \sum_i w_i$: the log of an unbiased estimate of $Z$.

    Adding $c$ to every log-weight adds exactly $c$. Log-weights of $-\infty$ (zero weight)
    are fine; a NaN gives NaN.
    """
    return log_Z_estimate(jnp.asarray(log_weights))


@jax.jit
def elbo(log_weights: Float[ArrayLike, " n"]) -> Float[Array, ""]:
    r"""$\frac1N \sum_i \log w_i$, for samples from the proposal: a lower bound on $\log Z$
    in expectation (Jensen)."""
    return jnp.mean(jnp.asarray(log_weights))


@jax.jit
def eubo(log_weights: Float[ArrayLike, " n"]) -> Float[Array, ""]:
    r"""$\frac1N \sum_i \log w_i$ over log-weights of trajectories drawn from the *target*
    path measure (for example, exact target samples pushed through the noising process):
    an upper bound on $\log Z$ in expectation. Same formula as `elbo`; the caller supplies
    the right trajectories."""
    return jnp.mean(jnp.asarray(log_weights))


@jax.jit
def ess(log_weights: Float[ArrayLike, " n"]) -> Float[Array, ""]:
    r"""Normalised effective sample size $\frac{(\sum_i w_i)^2}{N \sum_i w_i^2} \in [1/N, 1]$.

    Computed in log space, $\exp(2\,\mathrm{lse}(\log w) - \mathrm{lse}(2\log w) - \log N)$,
    after subtracting the largest log-weight, so it does not overflow and does not change
    when a constant is added to every log-weight. 1 for equal weights, $1/N$ when one
    weight dominates. NaN if every weight is zero or any is NaN.
    """
    lw = jnp.asarray(log_weights)
    lw = lw - jax.lax.stop_gradient(jnp.max(lw))  # exact invariance to a common shift
    log_ess = 2 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2 * lw) - jnp.log(lw.shape[0])
    return jnp.minimum(jnp.exp(log_ess), 1.0)  # rounding can give 1 + 1e-7


def pareto_k(log_weights: Float[ArrayLike, " n"]) -> float:
    r"""The Pareto $\hat k$ of the importance weights: the shape of a generalised Pareto
    distribution fitted to their largest values (PSIS, as ArviZ's `psislw` with `reff=1`
    computes it).

    Below 0.5 the weights' tail is light and estimates converge at the usual rate; above
    `MAX_PARETO_K` (0.7) a few weights dominate and an estimate such as $\log\hat Z$ is
    not to be trusted, whatever the sample size. Only finite log-weights enter
    ($-\infty$ is a zero weight). NaN for fewer than 10 of them or for equal weights, whose
    tail has nothing to fit; $+\infty$ when 4 or fewer weights lie above the tail's
    cutoff (a tail too short, or tied, to fit).

    The fit (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR; Zhang and
    Stephens 2009) takes the largest $\lceil\min(n/5, 3\sqrt n)\rceil$ weights above the
    next one as the tail ($m$ of them), estimates the GPD's $b = -k/\sigma$ by its
    profile-likelihood posterior mean over $30 + \lfloor\sqrt m\rfloor$ grid points, and
    shrinks $\hat k$ to 0.5 with a prior worth 10 observations. On the host (numpy,
    float64), a few ms for $10^5$ weights; no import of ArviZ, whose first import takes 1–2 s.
    """
    lw = np.asarray(log_weights, dtype=float).ravel()
    lw = lw[np.isfinite(lw)]
    if lw.size < 10 or np.all(lw == lw[0]):
        return math.nan
    lw = np.sort(lw - lw.max())
    tail_size = math.ceil(min(lw.size / 5, 3 * math.sqrt(lw.size)))
    cutoff = max(lw[-tail_size - 1], np.log(np.finfo(float).tiny))
    tail = lw[lw > cutoff]
    if tail.size <= 4:
        return math.inf
    return _gpd_shape(np.exp(tail) - np.exp(cutoff))


def _gpd_shape(x: np.ndarray) -> float:
    r"""The shape $\hat k$ of a generalised Pareto distribution fitted to the sorted
    exceedances `x` (Zhang and Stephens' empirical Bayes estimate, with the weakly
    informative prior of Vehtari et al. 2024)."""
    m = x.size
    grid = 30 + int(math.sqrt(m))
    b = 1 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = b / (3 * x[int(m / 4 + 0.5) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    log_lik = m * (np.log(-b / k) - k - 1)
    weights = np.exp(log_lik - log_lik.max())
    weights /= weights.sum()
    keep = weights >= 10 * np.finfo(float).eps
    b_mean = np.sum(b[keep] * weights[keep]) / np.sum(weights[keep])
    k_hat = np.log1p(-b_mean * x).mean()
    return float((m * k_hat + 10 * 0.5) / (m + 10))


@jax.jit
def unique_fraction(x: Float[ArrayLike, "n d"]) -> Float[Array, ""]:
    """The fraction of the rows of `x` that are distinct: 1 for draws from a continuous
    law, lower after resampling (duplicated particles). NaN rows count as distinct."""
    x = jnp.asarray(x)
    x = x[jnp.lexsort(x.T[::-1])]
    new = jnp.any(x[1:] != x[:-1], axis=1)
    return (1 + jnp.sum(new)) / x.shape[0]


# --------------------------------------------------------------------------------------
# MMD


def _sq_dists(a: Float[Array, "n d"], b: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """Squared euclidean distances, via one matrix product (clipped at 0)."""
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T
    return jnp.maximum(d2, 0.0)


def _pooled(x: Array, y: Array) -> Array:
    """`x` and `y` stacked and centred (distances are translation invariant, and the
    matrix-product form of `_sq_dists` is most accurate near the origin)."""
    z = jnp.concatenate([x, y]).astype(jnp.result_type(x, y, float))
    return z - jnp.mean(z, axis=0)


@functools.partial(jax.jit, static_argnames=("max_points",))
def _median_distance(x: Array, y: Array, key, max_points: int) -> Float[Array, ""]:
    """(Lower) median of the distances between distinct points of (a subsample of) `x` and
    `y` pooled; 1 if that is 0 (all points equal, when any bandwidth gives MMD 0)."""
    z = _pooled(x, y)
    n = z.shape[0]
    if n > max_points:
        if key is None:  # evenly strided: deterministic, and takes from every part of z
            idx = jnp.round(jnp.linspace(0, n - 1, max_points)).astype(int)
        else:
            idx = jax.random.choice(key, n, (max_points,), replace=False)
        z = z[idx]
    m = z.shape[0]
    d2 = jnp.where(jnp.eye(m, dtype=bool), jnp.inf, _sq_dists(z, z))  # each pair twice
    h = jnp.sqrt(_lower_median_of_pairs(d2, m * (m - 1) // 2))
    return jnp.where(h > 0, h, 1.0)


def _lower_median_of_pairs(d2: Float[Array, "m m"], pairs: int) -> Float[Array, ""]:
    """The lower median of the `pairs` finite values of the symmetric `d2` (each twice,
    `inf` elsewhere), all >= 0, found by bisection on their bit patterns, which order
    non-negative floats as integers: one count per bit, where XLA's CPU sort of the
    values would take seconds."""
    bits = jax.lax.bitcast_convert_type(d2, jnp.int32 if d2.dtype == jnp.float32 else jnp.int64)
    below = 2 * ((pairs - 1) // 2 + 1)  # entries <= the lower median, at least

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) >= below
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    _, hi = jax.lax.fori_loop(0, 8 * bits.dtype.itemsize, halve, (jnp.min(bits), jnp.max(bits)))
    return jax.lax.bitcast_convert_type(hi, d2.dtype)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _mmd_u(x: Array, y: Array, h: Array, chunk_size: int) -> Float[Array, ""]:
    n, m = x.shape[0], y.shape[0]
    z = _pooled(x, y)
    scale = -0.5 / jnp.asarray(h, z.dtype) ** 2
    # Each row i of the pooled kernel matrix contributes
    #   x row: (sum_{j in x} k_ij - 1) / (n(n-1)) - sum_{j in y} k_ij / (nm)
    #   y row: (sum_{j in y} k_ij - 1) / (m(m-1)) - sum_{j in x} k_ij / (nm)
    # (k_ii = 1): summing small per-row differences avoids cancelling large totals.
    total = n + m
    chunk = min(chunk_size, total)
    n_chunks = -(-total // chunk)
    pad = n_chunks * chunk - total
    rows = jnp.concatenate([z, jnp.zeros((pad, z.shape[1]), z.dtype)]).reshape(n_chunks, chunk, -1)
    index = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)

    def row_terms(args):
        block, idx = args
        k = jnp.exp(scale * _sq_dists(block, z))
        sx, sy = jnp.sum(k[:, :n], axis=1), jnp.sum(k[:, n:], axis=1)
        x_row = (sx - 1) / (n * (n - 1)) - sy / (n * m)
        y_row = (sy - 1) / (m * (m - 1)) - sx / (n * m)
        term = jnp.where(idx < n, x_row, y_row)
        return jnp.sum(jnp.where(idx < total, term, 0.0))

    return jnp.sum(jax.lax.map(row_terms, (rows, index)))


def mmd(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    bandwidth: float | Float[ArrayLike, ""] | None = None,
    *,
    key: PRNGKeyArray | None = None,
    chunk_size: int = 1024,
    max_median_points: int = 2000,
) -> Float[Array, ""]:
    r"""Unbiased squared maximum mean discrepancy $\mathrm{MMD}^2_u(x, y)$.

    $$\frac{1}{n(n-1)}\sum_{i\ne j} k(x_i,x_j) + \frac{1}{m(m-1)}\sum_{i\ne j} k(y_i,y_j)
    - \frac{2}{nm}\sum_{i,j} k(x_i,y_j)$$

    with the Gaussian kernel $k(a, b) = \exp(-\|a-b\|^2 / (2h^2))$. Unbiased, so it can be
    slightly negative when $x$ and $y$ have the same law (its standard deviation is then
    $O(1/n)$).

    **Arguments:**

    - `x`, `y`: `(n, d)` and `(m, d)` samples, $n, m \ge 2$.
    - `bandwidth`: $h$. `None` (default): the median heuristic, $h$ = the median distance
      between distinct points of the pooled sample, taken over at most `max_median_points`
      of its points (a random subsample with `key`, else an evenly strided one).
    - `chunk_size`: rows of the kernel matrix computed at a time (`jax.lax.map` over row
      blocks); memory is `chunk_size * (n + m)` floats, never `(n + m)^2`.

    Jit-able (`chunk_size` and `max_median_points` static). A NaN anywhere gives NaN
    (the diagnostics drop non-finite rows first).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd needs (n, d) and (m, d) samples, got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"mmd needs at least 2 points per side, got {x.shape[0]} and {y.shape[0]}")
    if bandwidth is None:
        bandwidth = _median_distance(x, y, key, max_median_points)
    bandwidth = jnp.asarray(bandwidth, jnp.result_type(x, y, float))  # one signature, one compile
    return _mmd_u(x, y, bandwidth, chunk_size)


# --------------------------------------------------------------------------------------
# Sinkhorn


class SinkhornResult(NamedTuple):
    """What `sinkhorn` returns.

    - `cost`: the regularised OT cost (ott-jax's `reg_ot_cost`), NaN if it is not finite.
    - `epsilon`: the absolute regularisation $\\varepsilon$ that was used.
    - `converged`: whether the marginal error fell below the threshold.
    - `n_iters`: Sinkhorn iterations run.
    """

    cost: Float[Array, ""]
    epsilon: Float[Array, ""]
    converged: Bool[Array, ""]
    n_iters: Int[Array, ""]


def _subsample(x: Array, key, max_points: int, what: str) -> Array:
    n = x.shape[0]
    if n <= max_points:
        return x
    if key is None:
        raise ValueError(f"{what} has {n} > max_points={max_points} points: pass key to subsample")
    return x[jax.random.choice(key, n, (max_points,), replace=False)]


@functools.partial(jax.jit, static_argnames=("max_iterations", "threshold", "momentum_start"))
def _sinkhorn_solve(x, y, epsilon, relative, max_iterations: int, threshold: float,
                    momentum_start: int) -> SinkhornResult:
    # ott-jax takes seconds to import: only a run that asks for Sinkhorn pays for it.
    from ott.geometry import epsilon_scheduler, geometry, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import acceleration
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    cost = pointcloud.PointCloud(x, y).cost_matrix  # squared euclidean, formed once
    eps = epsilon * jnp.where(relative, jnp.mean(cost), 1.0)
    geom = geometry.Geometry(
        cost_matrix=cost, epsilon=epsilon_scheduler.Epsilon(target=eps, init=100.0, decay=0.95)
    )
    solver = ott_sinkhorn.Sinkhorn(max_iterations=max_iterations, threshold=threshold,
                                   momentum=acceleration.Momentum(start=momentum_start))
    out = solver(linear_problem.LinearProblem(geom))
    finite = jnp.isfinite(out.reg_ot_cost)
    return SinkhornResult(jnp.where(finite, out.reg_ot_cost, jnp.nan), eps,
                          out.converged & finite, out.n_iters)


def sinkhorn(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    epsilon: float = 1e-3,
    *,
    key: PRNGKeyArray | None = None,
    max_points: int = 2000,
    relative_epsilon: str | None = "mean",
    max_iterations: int = 5000,
    threshold: float = 1e-3,
) -> SinkhornResult:
    r"""Entropic optimal transport cost between the empirical measures of `x` and `y`.

    $\mathrm{OT}_\varepsilon = \min_{P \in \Pi(a, b)} \langle P, C\rangle
    + \varepsilon\,\mathrm{KL}(P \,\|\, a b^\top)$ with uniform $a, b$ and
    $C_{ij} = \|x_i - y_j\|^2$ (ott-jax's `reg_ot_cost`; *not* debiased, so it is
    about $\varepsilon \log n$ rather than 0 for identical clouds). For any $\varepsilon$,
    $W_2^2 \le \mathrm{OT}_\varepsilon \le W_2^2 + \varepsilon \log \min(n, m)$.
    Returns a `SinkhornResult` (`cost`, `epsilon`, `converged`, `n_iters`).

    **Arguments:**

    - `epsilon`: the regularisation. With `relative_epsilon="mean"` (default) it is a
      fraction of the mean of $C$, as with ott-jax's `relative_epsilon="mean"`: the
      absolute $\varepsilon$ is `epsilon * mean(C)`, so the default $10^{-3}$ (the design
      brief's $\varepsilon$) is scale-free. `relative_epsilon=None` takes `epsilon` as
      absolute. (In ott-jax 0.6 a bare float `epsilon` is absolute.)
    - `key`, `max_points`: each side with more than `max_points` points is subsampled
      without replacement (`key` is then required).
    - `max_iterations`, `threshold`: Sinkhorn stops when the L1 error of the marginals is
      below `threshold`; `converged` says whether it got there. In float32 that error
      has a floor of roughly $10^{-7} \max C / \varepsilon$, so at $\varepsilon = 10^{-3}
      \,\mathrm{mean}(C)$ on clouds with far-apart clusters it may stall near the default
      $10^{-3}$; the cost is then still accurate to about that relative precision.

    The solver (log-domain Sinkhorn) anneals $\varepsilon$ from $100\times$ its target
    down by a factor 0.95 per iteration and then uses Lehmann et al.'s adaptive
    over-relaxation (ott-jax `Momentum(start=20)`) for up to half of `max_iterations`: on
    clustered clouds (gmm40) it converges in a few hundred iterations where plain Sinkhorn
    needs over 5000. The momentum can also oscillate without converging; then plain
    Sinkhorn (compiled only then) runs the other half from the start, and its cost is
    returned (the momentum run's, if only that one is finite; `n_iters` counts both). The
    cost matrix (at most `max_points`$^2$ floats) is formed once. On 2 CPU cores a
    2000-point problem costs about 6 ms per iteration. Not jit-able (the rerun is decided
    on the host).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sinkhorn needs (n, d) and (m, d) samples, got {x.shape} and {y.shape}")
    if relative_epsilon not in (None, "mean"):
        raise ValueError(f"relative_epsilon must be None or 'mean', got {relative_epsilon!r}")
    kx, ky = (None, None) if key is None else jax.random.split(key)
    x = _subsample(x, kx, max_points, "x")
    y = _subsample(y, ky, max_points, "y")
    solve = functools.partial(_sinkhorn_solve, x, y, epsilon, relative_epsilon == "mean",
                              threshold=threshold)
    half = max_iterations // 2
    fast = solve(momentum_start=20, max_iterations=max(half, 1))
    if bool(fast.converged):
        return fast
    plain = solve(momentum_start=0, max_iterations=max(max_iterations - half, 1))
    keep = plain if bool(jnp.isfinite(plain.cost)) or not bool(jnp.isfinite(fast.cost)) else fast
    return keep._replace(n_iters=fast.n_iters + plain.n_iters)


# --------------------------------------------------------------------------------------
# Wasserstein-2


def w2(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "n d"]) -> float:
    r"""Exact $W_2$ between two empirical measures with the same number of points.

    $W_2^2 = \min_\sigma \frac1n \sum_i \|x_i - y_{\sigma(i)}\|^2$ over permutations
    $\sigma$, solved with `scipy.optimize.linear_sum_assignment` on the host in float64.
    Not jit-able. $O(n^3)$ time and $O(n^2)$ memory, so $n \le$ `W2_MAX_POINTS` (5000).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"w2 needs (n, d) and (n, d) samples, got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"w2 needs the same number of points on both sides, got {x.shape[0]} and "
            f"{y.shape[0]}; subsample the larger one"
        )
    n = x.shape[0]
    if n == 0:
        raise ValueError("w2 needs at least one point per side")
    if n > W2_MAX_POINTS:
        raise ValueError(
            f"w2 solves an n x n assignment problem; n = {n} > {W2_MAX_POINTS} would be too "
            f"slow: subsample, or use sliced_w2"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    cost = np.sum(x**2, 1)[:, None] + np.sum(y**2, 1)[None, :] - 2 * x @ y.T
    cost = np.maximum(cost, 0.0)
    import scipy.optimize  # only a run that asks for w2 pays for importing it

    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return float(np.sqrt(np.mean(np.sum((x[rows] - y[cols]) ** 2, axis=1))))


@functools.partial(jax.jit, static_argnames=("projections",))
def sliced_w2(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "n d"],
    key: PRNGKeyArray,
    projections: int = 128,
) -> Float[Array, ""]:
    r"""Monte Carlo sliced Wasserstein-2 distance between equal-size samples.

    $\big(\frac1P\sum_p W_2^2(\theta_p^\top x, \theta_p^\top y)\big)^{1/2}$.

    The $P$ = `projections` directions $\theta_p$ are uniform on the unit sphere (from
    `key`); each one-dimensional $W_2$ matches sorted projections exactly. `x` and `y`
    need the same number of points. For $y = x + m$ it is $(\frac1P\sum_p (\theta_p^\top
    m)^2)^{1/2} \approx \|m\| / \sqrt d$.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"sliced_w2 needs two (n, d) arrays of one shape, got {x.shape} and {y.shape}"
        )
    theta = jax.random.normal(key, (x.shape[1], projections), dtype=jnp.result_type(float))
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px, py = jnp.sort(x @ theta, axis=0), jnp.sort(y @ theta, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


# --------------------------------------------------------------------------------------
# modes


@jax.jit
def mode_counts(x: Float[ArrayLike, "n d"], mixture: GaussianMixture) -> Float[Array, " K"]:
    """How many samples each component of `mixture` is the most responsible for.

    A sample goes to $\\arg\\max_k \\log w_k + \\log\\mathcal N(x; \\mu_k, \\Sigma_k)$, the
    largest responsibility. Non-finite samples go to no component.
    """
    x = jnp.asarray(x)
    comp = jnp.argmax(jax.vmap(mixture.component_log_probs)(x), axis=-1)
    comp = jnp.where(jnp.all(jnp.isfinite(x), axis=-1), comp, -1)  # one_hot(-1) is all zero
    return jnp.sum(jax.nn.one_hot(comp, mixture.weights.shape[0]), axis=0)


@jax.jit
def _coverage(counts: Array, n, threshold) -> Array:
    return jnp.mean(counts >= threshold * n)


@jax.jit
def _normalised_entropy(counts: Array) -> Array:
    k, total = counts.shape[0], jnp.sum(counts)
    p = counts / jnp.maximum(total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    value = entropy / jnp.log(k) if k > 1 else jnp.ones_like(entropy)
    return jnp.where(total > 0, value, jnp.nan)


def mode_coverage(
    x: Float[ArrayLike, "n d"], mixture: GaussianMixture, threshold: float = 0.01
) -> Float[Array, ""]:
    """Fraction of the mixture's components holding at least `threshold` of the samples.

    Each sample is assigned to its most responsible component (`mode_counts`); a component
    is covered when it holds $\\ge$ `threshold` $\\cdot n$ of the $n$ samples (non-finite
    ones count in $n$ but go to no component). The default 1% is the design brief's; for
    $K$ equal components it is below the $1/K$ share of each when $K < 100$. Jit-able.
    """
    return _coverage(mode_counts(x, mixture), jnp.shape(x)[0], threshold)


def emc(x: Float[ArrayLike, "n d"], mixture: GaussianMixture) -> Float[Array, ""]:
    r"""Entropy of mode coverage: $-\sum_k p_k \log p_k / \log K \in [0, 1]$.

    $p_k$ is the fraction of the (finite) samples assigned to component $k$
    (`mode_counts`). 1 when the samples spread evenly over all $K$ components, 0 when they
    sit on one. Defined as 1 when $K = 1$; NaN when no sample is finite. Jit-able.
    """
    return _normalised_entropy(mode_counts(x, mixture))
