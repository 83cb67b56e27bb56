r"""Monte-Carlo estimates over $t$ and $x \sim p_t$: the FP residuals, the score error, the Girsanov bound.

Points are drawn by the forward process from data: $t$ stratified uniform on
$[t_{\min}, t_{\max}]$ (one per stratum), $x_t = a_t x_0 + \sigma_t \varepsilon$ with $x_0$
from the data. Every estimate comes with its standard error (the points are treated as
independent, which is conservative for the stratified times).
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from sdekit import AbstractDensityScore, AbstractPotentialScore, AbstractProcess, AbstractScore

from sdekit.fokker_planck import (
    check_divergence,
    log_fp_residual,
    score_fp_residual,
    squared_norm_estimate,
)


BIN_SPACINGS = ("uniform", "log")


def time_bin_edges(t_min: float, t_max: float, bins: int, spacing: str = "uniform") -> np.ndarray:
    r"""`bins + 1` edges of `bins` intervals of $[t_{\min}, t_{\max}]$, evenly spaced in $t$
    (`"uniform"`) or in $\log t$ (`"log"`, which needs $t_{\min} > 0$)."""
    if isinstance(bins, bool) or not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if spacing not in BIN_SPACINGS:
        raise ValueError(f"bin_spacing must be one of {BIN_SPACINGS}, got {spacing!r}")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if spacing == "log":
        if not t_min > 0:
            raise ValueError(
                f"log-spaced time bins need t_min > 0, got t_min={t_min}; use bin_spacing='uniform' "
                "or a positive t_min"
            )
        return np.geomspace(float(t_min), float(t_max), bins + 1)
    return np.linspace(float(t_min), float(t_max), bins + 1)


def binned_noised_points(
    key: PRNGKeyArray,
    process: AbstractProcess,
    x0: Float[Array, "m d"],
    n: int,
    edges: np.ndarray,
) -> tuple[Float[Array, " n"], Float[Array, "n d"], np.ndarray]:
    r"""`n` pairs $(t_i, x_i)$, $x_i \sim p_{t_i}$, stratified in the time bins `edges`, and each point's bin.

    Bin $b$ gets $n_b$ = `n // B` points (one more for the first `n % B` bins), its times
    stratified uniform in the bin (one per sub-interval); data rows are drawn with
    replacement from `x0`. One bin of `n` points is `noised_points`.
    """
    edges = np.asarray(edges, dtype=float)
    bins = edges.shape[0] - 1
    if isinstance(n, bool) or not (isinstance(n, int) and n >= 2):
        raise ValueError(f"the number of points must be an integer >= 2, got {n!r}")
    if bins < 1 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"time bin edges must be increasing, got {edges.tolist()}")
    counts = np.full(bins, n // bins) + (np.arange(bins) < n % bins)
    which = np.repeat(np.arange(bins), counts)
    j = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    k_t, k_i, k_e = jax.random.split(key, 3)
    u = (jnp.asarray(j) + jax.random.uniform(k_t, (n,), dtype=x0.dtype)) / jnp.asarray(counts[which])
    lo, width = jnp.asarray(edges[:-1][which], x0.dtype), jnp.asarray(np.diff(edges)[which], x0.dtype)
    ts = lo + width * u
    rows = x0[jax.random.randint(k_i, (n,), 0, x0.shape[0])]
    a, sigma = jax.vmap(process.marginal)(ts)
    eps = jax.random.normal(k_e, rows.shape, dtype=x0.dtype)
    return ts, a[:, None] * rows + sigma[:, None] * eps, which


def noised_points(
    key: PRNGKeyArray,
    process: AbstractProcess,
    x0: Float[Array, "m d"],
    n: int,
    t_min: float | None = None,
    t_max: float | None = None,
) -> tuple[Float[Array, " n"], Float[Array, "n d"]]:
    r"""`n` pairs $(t_i, x_i)$, $x_i \sim p_{t_i}$: stratified times on `[t_min, t_max]`
    (default: the process's sampling window) and data rows drawn with replacement from `x0`."""
    lo = process.t_min if t_min is None else t_min
    hi = process.t_max if t_max is None else t_max
    if not lo < hi:
        raise ValueError(f"need t_min < t_max, got t_min={lo}, t_max={hi}")
    ts, xs, _ = binned_noised_points(key, process, x0, n, np.array([float(lo), float(hi)]))
    return ts, xs


def _mean_se(values: Array) -> tuple[float, float]:
    values = jnp.asarray(values)
    n = values.shape[0]
    return float(jnp.mean(values)), float(jnp.std(values, ddof=1) / math.sqrt(n))


def _potential_of(score: AbstractScore) -> Callable | None:
    """`score.potential` for an `sdekit.AbstractPotentialScore` (a potential net; for an
    exact `AbstractDensityScore` it is `log_prob`), else `None`."""
    return score.potential if isinstance(score, AbstractPotentialScore) else None


@eqx.filter_jit
def _squared_residuals(residual, field, process, ts, xs, keys, divergence: str, probes: int, chunk: int):
    """`(|R|^2, scale)` at each point for `residual` (`score_fp_residual` of a score or
    `log_fp_residual` of a potential): exact, or unbiased from `probes` Hutchinson probes."""
    d = xs.shape[-1]

    def one(args):
        t, x, k = args
        if divergence == "exact":
            R, scale = residual(field, process, t, x)
            return jnp.sum(R**2), scale
        v = jax.random.rademacher(k, (probes, d)).astype(x.dtype)
        R, scale = jax.vmap(lambda p: residual(field, process, t, x, p))(v)
        return squared_norm_estimate(R), jnp.mean(scale)

    return jax.lax.map(one, (ts, xs, keys), batch_size=chunk)


def fp_residual_values(
    key: PRNGKeyArray,
    score: AbstractScore,
    process: AbstractProcess,
    ts: Float[Array, " n"],
    xs: Float[Array, "n d"],
    *,
    divergence: str = "exact",
    probes: int = 2,
    log_density: bool = False,
    chunk: int = 256,
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    r"""Per point: an unbiased estimate of $\|R(t_i, x_i)\|^2$, and the scale of the two sides.

    The score residual, or with `log_density=True` the log-density residual of the score's
    `potential` (an `sdekit.AbstractPotentialScore`). Exact divergences, or Hutchinson with `probes` Rademacher
    probes per point (`squared_norm_estimate`). `chunk` points are vmapped at a time.
    """
    check_divergence(divergence, probes)
    keys = jax.random.split(key, ts.shape[0])
    if not log_density:
        return _squared_residuals(score_fp_residual, score, process, ts, xs, keys, divergence, probes, chunk)
    potential = _potential_of(score)
    if potential is None:
        raise ValueError(
            f"{type(score).__name__} is not an sdekit.AbstractPotentialScore (no `potential(t, x)`), "
            "so it has no log-density residual; pass log_density=False or a potential score"
        )
    return _squared_residuals(log_fp_residual, potential, process, ts, xs, keys, divergence, probes, chunk)


def _binned_mean_se(values: Array, which: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin: the mean of `values` and its standard error."""
    values = np.asarray(values, dtype=np.float64)
    means, ses = [], []
    for b in range(bins):
        v = values[which == b]
        means.append(v.mean())
        ses.append(v.std(ddof=1) / math.sqrt(v.size))
    return np.array(means), np.array(ses)


def fp_residual(
    key: PRNGKeyArray,
    score: AbstractScore,
    process: AbstractProcess,
    x0: Float[Array, "m d"],
    *,
    n: int = 1000,
    divergence: str = "exact",
    probes: int = 2,
    t_min: float | None = None,
    t_max: float | None = None,
    bins: int = 10,
    bin_spacing: str = "uniform",
    chunk: int = 256,
) -> dict[str, float | list[float]]:
    r"""$E_{t, x\sim p_t}\|R\|^2$ for the score FP residual, with its standard error, overall and per time bin.

    `x0`: data (rows of the target law $\pi$). $[t_{\min}, t_{\max}]$ (default: the
    process's window) is cut into `bins` intervals, evenly spaced in $t$
    (`bin_spacing="uniform"`) or in $\log t$ (`"log"`, for $t_{\min} > 0$: it resolves the
    small times, where a learned score's residual is largest); the `n` points
    (`binned_noised_points`, at least 2 per bin) are stratified within the bins. Per bin
    $b$: the mean $\bar R_b$ of $\|R\|^2$ and its standard error. Overall: the
    stratified estimate $\sum_b w_b \bar R_b$ of $E_{t \sim U[t_{\min}, t_{\max}]}$,
    $w_b$ the bin's share of the window, with standard error $\sqrt{\sum_b w_b^2 se_b^2}$.

    Returns `fp_residual`, `fp_residual_se`, `fp_residual_relative`
    ($\sqrt{E\|R\|^2 / E[\text{scale}]}$, see `score_fp_residual`), the lists
    `fp_residual_bins`, `fp_residual_bins_se` (length `bins`) and `fp_residual_bin_edges`
    (length `bins + 1`); and for an `sdekit.AbstractPotentialScore` (with `potential`) the same for the
    log-density residual, prefixed `log_` (the edges are shared).
    """
    lo = process.t_min if t_min is None else t_min
    hi = process.t_max if t_max is None else t_max
    edges = time_bin_edges(lo, hi, bins, bin_spacing)
    if isinstance(n, int) and not isinstance(n, bool) and n < 2 * bins:
        raise ValueError(f"need n >= 2 * bins points (two per time bin for a standard error), got n={n}, bins={bins}")
    weights = np.diff(edges) / (edges[-1] - edges[0])
    k_pts, k_s, k_u = jax.random.split(key, 3)
    ts, xs, which = binned_noised_points(k_pts, process, x0, n, edges)
    options = dict(divergence=divergence, probes=probes, chunk=chunk)
    out: dict[str, float | list[float]] = {}
    prefixes = [("fp_residual", False)]
    if _potential_of(score) is not None:
        prefixes.append(("log_fp_residual", True))
    for (name, log_density), k in zip(prefixes, (k_s, k_u)):
        values, scale = fp_residual_values(k, score, process, ts, xs, log_density=log_density, **options)
        means, ses = _binned_mean_se(values, which, bins)
        scale_means, _ = _binned_mean_se(scale, which, bins)
        mean = float(weights @ means)
        out[name] = mean
        out[f"{name}_se"] = float(math.sqrt(weights**2 @ ses**2))
        out[f"{name}_relative"] = math.sqrt(max(mean, 0.0) / float(weights @ scale_means))
        out[f"{name}_bins"] = means.tolist()
        out[f"{name}_bins_se"] = ses.tolist()
    out["fp_residual_bin_edges"] = edges.tolist()
    return out


@eqx.filter_jit
def _sq_errors(score, reference, ts, xs):
    """`|score - reference|^2` and `|reference|^2` at each point."""
    ref = jax.vmap(reference)(ts, xs)
    return jnp.sum((jax.vmap(score)(ts, xs) - ref) ** 2, -1), jnp.sum(ref**2, -1)


def score_error(
    key: PRNGKeyArray,
    score: AbstractScore,
    reference: AbstractScore,
    process: AbstractProcess,
    x0: Float[Array, "m d"],
    *,
    n: int = 4000,
    t_min: float | None = None,
    t_max: float | None = None,
) -> dict[str, float]:
    r"""$E_{t, x\sim p_t}\|s_\theta(t, x) - \nabla\log p_t(x)\|^2$ against the exact `reference` score.

    Returns `score_error`, `score_error_se`, and the relative error
    `score_error_relative` $= E\|s_\theta - s\|^2 / E\|s\|^2$.
    """
    ts, xs = noised_points(key, process, x0, n, t_min, t_max)
    sq, ref_sq = _sq_errors(score, reference, ts, xs)
    mean, se = _mean_se(sq)
    return {"score_error": mean, "score_error_se": se, "score_error_relative": mean / float(jnp.mean(ref_sq))}


def girsanov_bound(
    key: PRNGKeyArray,
    score: AbstractScore,
    reference: AbstractScore,
    process: AbstractProcess,
    x0: Float[Array, "m d"],
    *,
    n: int = 4000,
) -> dict[str, float]:
    r"""The Girsanov bound on $\mathrm{KL}(p_{t_{\min}} \,\|\, q)$ for the reverse SDE with score $s_\theta$.

    $\mathrm{KL}(p_{t_{\max}} \| \text{prior}) + \tfrac12\int_{t_{\min}}^{t_{\max}} g(t)^2
    E_{p_t}\|s_\theta - \nabla\log p_t\|^2\,dt$ (the reverse SDE in continuous time, started
    from the process's prior). `reference` is the exact score, an `sdekit.AbstractDensityScore`
    (the exact mixture score is one). Returns `girsanov_bound`, its standard error
    `girsanov_bound_se`, and the two terms `kl_prior` (Monte Carlo, `kl_prior_se`) and
    `score_term` (`score_term_se`).
    """
    if not isinstance(reference, AbstractDensityScore):
        raise ValueError(
            f"the reference score {type(reference).__name__} must be an sdekit.AbstractDensityScore "
            "(with an exact log_prob(t, x), as the exact mixture score has) for KL(p_T || prior)"
        )
    k_pts, k_prior = jax.random.split(key)
    lo, hi = process.t_min, process.t_max
    ts, xs = noised_points(k_pts, process, x0, n)
    g2 = jax.vmap(process.diffusion)(ts) ** 2
    term = 0.5 * (hi - lo) * g2 * _sq_errors(score, reference, ts, xs)[0]
    score_term, score_se = _mean_se(term)
    k_i, k_e = jax.random.split(k_prior)
    a, sigma = process.marginal(hi)
    rows = x0[jax.random.randint(k_i, (n,), 0, x0.shape[0])]
    x_T = a * rows + sigma * jax.random.normal(k_e, rows.shape, dtype=x0.dtype)
    log_ratio = jax.vmap(lambda x: reference.log_prob(hi, x) - process.prior_log_prob(x))(x_T)
    kl, kl_se = _mean_se(log_ratio)
    return {
        "girsanov_bound": kl + score_term,
        "girsanov_bound_se": math.hypot(kl_se, score_se),
        "kl_prior": kl,
        "kl_prior_se": kl_se,
        "score_term": score_term,
        "score_term_se": score_se,
    }
