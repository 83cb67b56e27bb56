"""The registered diagnostics: `weights`, `sample-quality`, `eubo`, `sinkhorn` and `w2`.

Each is called as `diagnostic(key, target=..., sampler=..., samples=...)` and returns a
dict of plain Python numbers (`{}` when it does not apply).
"""

import functools
import math
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from sdekit import AbstractDiagnostic, AbstractPathSampler, AbstractSampler, AbstractTarget, Samples

from sdekit.metrics import (
    elbo, emc, ess, eubo, log_Z, mmd, mode_coverage, pareto_k, sinkhorn, sliced_w2, w2,
)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return x[np.all(np.isfinite(x), axis=1)]


def _host_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A numpy generator seeded from `key`, for subsampling on the host (no compilation)."""
    return np.random.default_rng([*np.asarray(jax.random.key_data(key)).ravel().tolist(), 0x5D])


def _at_most(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`x`, or `n` of its rows drawn without replacement when it has more."""
    if x.shape[0] <= n:
        return x
    return x[np.sort(rng.choice(x.shape[0], n, replace=False))]


def _exact_target(target: AbstractTarget | None) -> bool:
    return target is not None and target.has_exact_samples


def _has_paths_to_reverse(sampler: AbstractSampler | None, target: AbstractTarget | None) -> bool:
    """Whether `eubo` applies: backward weights, and exact samples to start them from."""
    return isinstance(sampler, AbstractPathSampler) and _exact_target(target)


class Weights(AbstractDiagnostic):
    r"""Importance-weight metrics: `log_Z`, `elbo`, `ess`, `pareto_k`, `log_Z_error`, `n_nonfinite_weights`.

    From `samples.log_weights` (nothing if the sampler gives none): `log_Z` is
    $\log\frac1N\sum_i w_i$, `elbo` the mean log-weight, `ess` the normalised effective
    sample size in $(0, 1]$, `pareto_k` the Pareto $\hat k$ of the weights' tail
    (`sdekit.metrics.pareto_k`: above 0.7 `log_Z` is not to be trusted), `log_Z_error` is
    `log_Z - target.log_Z` where the target's $\log Z$ is known, and
    `n_nonfinite_weights` counts log-weights that are NaN or $\pm\infty$ ($-\infty$ is a
    zero weight and enters the sums as such; a NaN makes `log_Z`, `elbo` and `ess` NaN,
    written as `null`).

    Equal log-weights, as a resampling sampler (`smc`, `scld`) returns, each carrying
    $\log\hat Z$, measure nothing about the samples: their `ess` would be 1 and their
    `elbo` $\log\hat Z$ by construction, so only `log_Z` (and `log_Z_error`) is given; such
    samplers report the ESS of their importance steps in their own statistics (`ess`,
    `min_ess`, `unique_fraction`, which `sdekit.run` records). Cost: O(n) on the host.
    """

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, float | int]:
        if samples is None or samples.log_weights is None:
            return {}
        lw = np.asarray(samples.log_weights)
        out: dict[str, float | int] = {"log_Z": float(log_Z(lw))}
        if not np.all(lw == lw[0]):
            out.update(elbo=float(elbo(lw)), ess=float(ess(lw)), pareto_k=pareto_k(lw))
        known = None if target is None else target.log_Z
        if known is not None:
            out["log_Z_error"] = out["log_Z"] - float(known)
        out["n_nonfinite_weights"] = int(np.sum(~np.isfinite(lw)))
        return out


class Eubo(AbstractDiagnostic):
    r"""The evidence upper bound `eubo`, for a sampler with backward weights.

    For an `sdekit.AbstractPathSampler` (one with `backward_log_weights`, such as the
    trained samplers) and a target with exact samples: the mean log-weight of trajectories
    run backwards from `points` exact samples (at most as many as the run's samples; the
    number used is returned as `eubo_points`). $\mathrm{ELBO} \le \log Z \le
    \mathrm{EUBO}$. Cost: about that of sampling as many points, and compiling the backward
    program. Anything else gets nothing.
    """

    points: int = 2000

    def cost(
        self,
        run_seconds: Mapping[str, float],
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> float:
        """The run's compilation and its sampling, scaled to `points` paths."""
        if not _has_paths_to_reverse(sampler, target):
            return 0.0
        m = self._points(samples)
        n = m if samples is None else samples.x.shape[0]
        return run_seconds["compile_seconds"] + run_seconds["sample_seconds"] * m / n

    def _points(self, samples: Samples | None) -> int:
        return self.points if samples is None else min(samples.x.shape[0], self.points)

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, float | int]:
        if not _has_paths_to_reverse(sampler, target):
            return {}
        k_x, k_path = jax.random.split(key)
        m = self._points(samples)
        x = target.sample(k_x, m)
        return {"eubo": float(eubo(sampler.backward_log_weights(k_path, x))), "eubo_points": m}


class SampleQuality(AbstractDiagnostic):
    """Samples against exact target samples: `mmd`; `mode_coverage`, `emc` on mixtures.

    Uses the raw samples, not importance-resampled ones, and only their finite rows
    (`n_nonfinite` in the run's metrics counts the others). Up to `mmd_points` of them (a
    random subset) are compared with as many fresh exact samples `target.sample(key, m)`:
    `mmd` is the unbiased MMD² (Gaussian kernel, median-heuristic bandwidth), and the
    number of points per side is returned as `mmd_points`. Cost: O(`mmd_points`²) kernel
    evaluations. Targets with no exact sampler get no `mmd`.

    When the target is a Gaussian mixture of two or more components (`target.mixture`),
    `mode_coverage` (fraction of components holding at least `coverage_threshold` of all
    samples, non-finite ones included in the count) and `emc` (entropy of component
    occupancy over log K) are added.
    """

    mmd_points: int = 2000
    coverage_threshold: float = 0.01

    def cost(
        self,
        run_seconds: Mapping[str, float],
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> float:
        """For `mmd`: a compilation as long as the run's, and its three kernel matrices,
        timed as two Sinkhorn iterations on as many points."""
        return _against_exact_cost(run_seconds, target, samples, self.mmd_points,
                                   compilations=1, iterations=2)

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, float | int]:
        if samples is None:
            return {}
        x = np.asarray(samples.x)
        out: dict[str, float | int] = {}
        mixture = None if target is None else target.mixture
        if mixture is not None and mixture.weights.shape[0] >= 2 and x.shape[0] > 0:
            out["mode_coverage"] = float(mode_coverage(x, mixture, self.coverage_threshold))
            out["emc"] = float(emc(x, mixture))
        if not _exact_target(target):
            return out
        xf, ref = _against_exact(samples, target, key, self.mmd_points)
        out["mmd"] = float(mmd(xf, ref)) if len(xf) >= 2 else math.nan
        out["mmd_points"] = len(xf)
        return out


class Sinkhorn(AbstractDiagnostic):
    r"""Samples against exact target samples: `sinkhorn`, the entropic optimal-transport cost.

    `sdekit.metrics.sinkhorn` (ott-jax) with squared-euclidean cost and $\varepsilon$ =
    `epsilon` times the mean cost (the design brief's $10^{-3}$), between up to `points`
    finite samples (a random subset; the number is returned as `sinkhorn_points`) and as
    many fresh exact ones; `sinkhorn_converged` says whether the marginal error fell below
    $10^{-3}$ within `max_iterations`. Where it did not (in float32 the error has a floor on
    far-spread clouds such as the funnel's), the cost agrees with a run of twice as many
    iterations to about six digits on the benchmark targets. Cost: O(`points`²) per
    iteration, about 6 ms at 2000 points on a CPU core pair. Targets with no exact sampler
    get nothing.
    """

    points: int = 2000
    epsilon: float = 1e-3
    max_iterations: int = 1000

    def cost(
        self,
        run_seconds: Mapping[str, float],
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> float:
        """Its worst case: two compilations (the accelerated solver and its plain
        fallback), each as long as the run's, and `max_iterations` iterations."""
        return _against_exact_cost(run_seconds, target, samples, self.points,
                                   compilations=2, iterations=self.max_iterations)

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, float | bool | int]:
        if samples is None or not _exact_target(target):
            return {}
        xf, ref = _against_exact(samples, target, key, self.points)
        if len(xf) < 2:
            return {"sinkhorn": math.nan, "sinkhorn_converged": False, "sinkhorn_points": len(xf)}
        result = sinkhorn(xf, ref, self.epsilon, max_points=self.points,
                          max_iterations=self.max_iterations)
        return {"sinkhorn": float(result.cost), "sinkhorn_converged": bool(result.converged),
                "sinkhorn_points": len(xf)}


def _against_exact_cost(run_seconds: Mapping[str, float], target: AbstractTarget | None,
                        samples: Samples | None, points: int, *, compilations: int,
                        iterations: int) -> float:
    """The cost of comparing up to `points` samples with exact ones: `compilations` as
    long as the run's, and `iterations` Sinkhorn iterations on as many points, one of them
    timed here once per process (`_iteration_seconds`); 0 where there is nothing to compare."""
    if samples is None or not _exact_target(target):
        return 0.0
    m = min(samples.x.shape[0], points)
    return (compilations * run_seconds["compile_seconds"]
            + iterations * _iteration_seconds(m, jnp.dtype(samples.x.dtype)))


@functools.cache
def _iteration_seconds(m: int, dtype: jnp.dtype) -> float:
    """Seconds of one log-domain Sinkhorn iteration on `m` points on the default device:
    its two log-sum-exp passes over an `(m, m)` cost matrix, best of 3 (compilation
    excluded; about 7.5 ms for m = 2000 in float32 on 2 CPU cores)."""
    @jax.jit
    def iteration(f, cost):
        g = -jax.nn.logsumexp((f[:, None] - cost) / 0.01, axis=0)
        return -jax.nn.logsumexp((g[None, :] - cost) / 0.01, axis=1)

    cost = jnp.asarray(np.random.default_rng(0).random((m, m)), dtype)  # nothing to compile
    f = jax.block_until_ready(iteration(jnp.zeros(m, dtype), cost))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(iteration(f, cost))
        times.append(time.perf_counter() - t0)
    return min(times)


def _against_exact(samples: Samples, target: AbstractTarget, key: PRNGKeyArray,
                   points: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `points` of the finite samples (a random subset) and as many exact ones."""
    xf = _at_most(_finite_rows(np.asarray(samples.x)), points, _host_rng(key))
    ref = np.asarray(target.sample(key, xf.shape[0])).astype(xf.dtype) if len(xf) else xf
    return xf, ref


class W2(AbstractDiagnostic):
    """Wasserstein-2 distances to exact target samples: exact `w2` and `sliced_w2`.

    On the finite rows of the raw samples. `w2` solves the exact assignment problem
    between `max_points` samples and as many exact ones (at most 5000: O(n³)); `sliced_w2`
    uses `projections` random directions on up to `sliced_points` samples. The numbers
    used are returned as `w2_points` and `sliced_w2_points`. Nothing for targets with no
    exact sampler.
    """

    max_points: int = 2000
    projections: int = 128
    sliced_points: int = 10_000

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, float]:
        if samples is None or not _exact_target(target):
            return {}
        rng = _host_rng(key)
        xf = _at_most(_finite_rows(np.asarray(samples.x)), self.sliced_points, rng)
        m = xf.shape[0]
        if m < 1:
            return {"w2": math.nan, "sliced_w2": math.nan}
        ref = np.asarray(target.sample(key, m)).astype(xf.dtype)
        k = min(m, self.max_points)  # the exact samples are iid: any k of them will do
        return {
            "w2": w2(_at_most(xf, k, rng), ref[:k]),
            "sliced_w2": float(
                sliced_w2(xf, ref, jax.random.fold_in(key, 1), projections=self.projections)
            ),
            "w2_points": k,
            "sliced_w2_points": m,
        }
