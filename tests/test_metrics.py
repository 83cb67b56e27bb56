"""Tests of the core metrics (`sdekit.metrics`) and of the diagnostics built on them.

Every check is against a ground truth (a closed form, an exact identity or inequality, or
an exactly known configuration), with a tolerance derived from the sample size. Seeds are
fixed.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance

import sdekit
from sdekit import metrics

KEY = jax.random.PRNGKey(20240601)
N = 400  # most tests use this many points: one compilation serves them all


def normal(seed: int, n: int = N, d: int = 2, shift=0.0) -> np.ndarray:
    """Standard normal draws (numpy: nothing to compile), float32 like JAX's default."""
    z = np.random.default_rng(seed).standard_normal((n, d)) + np.asarray(shift)
    return z.astype(np.float32)


def mixture_samples(mixture: sdekit.GaussianMixture, seed: int, n: int) -> np.ndarray:
    """Exact draws from an equal-weight, identity-covariance mixture (all that gmm40 is)."""
    rng = np.random.default_rng(seed)
    means = np.asarray(mixture.means)
    z = means[rng.integers(len(means), size=n)] + rng.standard_normal((n, means.shape[1]))
    return z.astype(np.float32)


# --------------------------------------------------------------------------------------
# weights


def test_ess_equal_weights_is_one():
    assert float(metrics.ess(jnp.full(N, 3.7))) == pytest.approx(1.0, rel=1e-6)


def test_ess_one_dominating_weight_is_one_over_n():
    n = N
    lw = jnp.full(n, -1e3).at[17].set(0.0)  # the others are e^-1000 times smaller
    assert float(metrics.ess(lw)) == pytest.approx(1 / n, rel=1e-6)
    assert float(metrics.log_Z(lw)) == pytest.approx(-math.log(n), abs=1e-5)


def test_weights_small_example():
    lw = jnp.log(jnp.array([1.0, 2.0, 3.0, 6.0]))
    assert float(metrics.ess(lw)) == pytest.approx(12**2 / (4 * (1 + 4 + 9 + 36)), rel=1e-6)
    assert float(metrics.log_Z(lw)) == pytest.approx(math.log(3.0), rel=1e-6)
    assert float(metrics.elbo(lw)) == pytest.approx(math.log(36.0) / 4, rel=1e-6)
    assert float(metrics.eubo(lw)) == float(metrics.elbo(lw))


def test_constant_shift_of_log_weights():
    # On a grid of 1/64 so that lw + c is exact in float32: the invariance is then exact.
    lw = jnp.asarray(np.round(128.0 * normal(0, N, 1)[:, 0]) / 64)
    for c in (-704.0, 128.5, 896.0):  # far beyond exp's float32 range: computed in log space
        assert float(metrics.ess(lw + c)) == float(metrics.ess(lw))
        assert float(metrics.log_Z(lw + c)) - float(metrics.log_Z(lw)) == pytest.approx(c, abs=1e-3)
        assert float(metrics.elbo(lw + c)) - float(metrics.elbo(lw)) == pytest.approx(c, abs=1e-3)
    assert 1 / N <= float(metrics.ess(lw)) <= 1


@pytest.mark.parametrize("k", [0.25, 1.0])
def test_pareto_k_of_pareto_weights(k):
    # weights with a Pareto tail of index 1/k: log w = k * Exp(1). PSIS fits the largest
    # M = 3 sqrt(n) weights; the estimate's sd is about (1 + k) / sqrt(M).
    n = 5000
    lw = k * np.random.default_rng(7).exponential(size=n)
    sd = (1 + k) / math.sqrt(3 * math.sqrt(n))
    assert abs(metrics.pareto_k(lw) - k) < 3 * sd
    assert metrics.pareto_k(lw - 700.0) == pytest.approx(metrics.pareto_k(lw), abs=1e-6)
    assert metrics.pareto_k(np.append(lw, [-np.inf, np.nan])) == metrics.pareto_k(lw)
    assert math.isnan(metrics.pareto_k(np.zeros(100))) and math.isnan(metrics.pareto_k(lw[:5]))


@pytest.mark.parametrize("n", [10, 57, 1000, 20_000])
def test_pareto_k_is_arviz_psislw(n):
    # sdekit computes PSIS's k-hat itself (ArviZ's first import costs seconds); it must
    # be ArviZ's number, light and heavy tails, ties and a too-short tail (inf) included.
    import warnings

    import arviz as az

    rng = np.random.default_rng(n)
    for lw in (rng.normal(size=n), 4 * rng.normal(size=n), np.log(rng.pareto(0.7, n) + 1e-9),
               np.round(rng.normal(size=n), 1), rng.exponential(size=n)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = float(az.psislw(lw - lw.max(), reff=1.0)[1])
        assert metrics.pareto_k(lw) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_unique_fraction():
    x = np.asarray(normal(0, 10, 3))
    assert float(metrics.unique_fraction(x)) == 1.0
    x[5] = x[2]
    x[7] = x[2]
    x[9, 1] = np.nan
    assert float(metrics.unique_fraction(x)) == pytest.approx(0.8)
    assert float(metrics.unique_fraction(x[[0, 0, 0, 0]])) == 0.25


def test_zero_weights_are_allowed():
    lw = jnp.array([0.0, -jnp.inf, 0.0, -jnp.inf])
    assert float(metrics.log_Z(lw)) == pytest.approx(math.log(0.5))
    assert float(metrics.ess(lw)) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------
# MMD


def _gauss_expect(h: float, var: float, d: int, dist2=0.0) -> float:
    """E exp(-|W|^2 / (2 h^2)) for W ~ N(delta, var I_d), |delta|^2 = dist2."""
    return (h**2 / (h**2 + var)) ** (d / 2) * math.exp(-dist2 / (2 * (h**2 + var)))


def test_mmd_same_law_is_near_zero():
    n, h, d = 1000, 1.0, 2
    x, y = normal(1, n), normal(2, n)
    # Under the null the unbiased MMD^2 is degenerate: Var = (2/(n(n-1)) * 2 + 4/n^2) E k~^2,
    # with E k~^2 <= E k(x, x')^2 = E exp(-|x - x'|^2 / h^2), x - x' ~ N(0, 2I).
    ek2 = _gauss_expect(h / math.sqrt(2), 2.0, d)
    sd = math.sqrt((4 / (n * (n - 1)) + 4 / n**2) * ek2)
    assert abs(float(metrics.mmd(x, y, h))) < 5 * sd
    # median heuristic bandwidth: same bound with E k~^2 <= 1
    assert abs(float(metrics.mmd(x, y))) < 5 * math.sqrt(4 / (n * (n - 1)) + 4 / n**2)


def test_mmd_shifted_matches_closed_form():
    n, h, d = 1000, 1.5, 2
    delta = np.array([1.0, -0.5])
    x, y = normal(3, n), normal(4, n, shift=delta)
    dist2 = float(np.sum(delta**2))
    # MMD^2 = 2 E k(x,x') - 2 E k(x,y) with x - x' ~ N(0, 2I), x - y ~ N(-delta, 2I)
    truth = 2 * _gauss_expect(h, 2.0, d) - 2 * _gauss_expect(h, 2.0, d, dist2)
    # Variance of the U-statistic: 4/n Var[g(x)] + 4/n Var[g'(y)] + O(1/n^2), with the
    # conditional expectations g(x) = E_x' k(x,x') - E_y k(x,y) in closed form, their
    # variance by Monte Carlo on 10^6 exact draws.
    a = (h**2 / (h**2 + 1.0)) ** (d / 2)
    z = np.random.default_rng(99).standard_normal((10**6, d))
    dd = delta

    def bump(u):
        return a * np.exp(-np.sum(u**2, axis=1) / (2 * (h**2 + 1.0)))

    g = bump(z) - bump(z - dd)  # x = z, and by symmetry the same law for y
    var = 2 * 4 / n * np.var(g) + 8 / n**2
    value = float(metrics.mmd(x, y, h))
    assert value == pytest.approx(truth, abs=5 * math.sqrt(var))
    assert value > 10 * math.sqrt(var)  # clearly positive


def test_mmd_symmetry_and_chunking():
    x, y = normal(7, 300), normal(8, 200, shift=1.0)
    v = float(metrics.mmd(x, y, 1.3))
    assert float(metrics.mmd(y, x, 1.3)) == pytest.approx(v, rel=1e-4, abs=1e-7)
    assert float(metrics.mmd(x, y, 1.3, chunk_size=77)) == pytest.approx(v, rel=1e-4, abs=1e-7)


def test_mmd_median_heuristic():
    x, y = normal(7, 300), normal(8, 200, shift=1.0)
    pooled = np.concatenate([np.asarray(x), np.asarray(y)]).astype(np.float64)
    h = float(np.median(scipy.spatial.distance.pdist(pooled)))
    assert float(metrics.mmd(x, y)) == pytest.approx(float(metrics.mmd(x, y, h)), rel=1e-3)
    # More points than max_median_points: a subsample, with or without a key.
    v = float(metrics.mmd(x, y, max_median_points=200))
    w = float(metrics.mmd(x, y, key=KEY, max_median_points=200))
    assert v == pytest.approx(float(metrics.mmd(x, y, h)), rel=0.1)
    assert w == pytest.approx(float(metrics.mmd(x, y, h)), rel=0.1)


def test_mmd_never_forms_the_full_kernel_matrix():
    n = 1250  # pooled 2500 points, chunks of 1024 rows
    x, y = normal(9, n), normal(10, n)
    hlo = jax.jit(metrics.mmd).lower(x, y, 1.0).as_text()
    assert "2500x2500" not in hlo and "1024x2500" in hlo


def test_mmd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mmd(jnp.zeros((1, 2)), jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        metrics.mmd(jnp.zeros((5, 2)), jnp.zeros((5, 3)))


# --------------------------------------------------------------------------------------
# Wasserstein


def test_w2_zero_at_equality_and_permutation():
    x = normal(11, 300, 3)
    assert metrics.w2(x, x) == 0.0
    assert metrics.w2(x, x[np.random.default_rng(0).permutation(300)]) == 0.0


def test_w2_one_dimension_is_sorted_matching():
    x = normal(12, 500, 1).astype(np.float64)
    y = normal(13, 500, 1, shift=0.7).astype(np.float64)
    expected = math.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert metrics.w2(x, y) == pytest.approx(expected, rel=1e-9)


def test_w2_shifted_gaussians():
    n, m = 800, np.array([3.0, -1.0])
    x, y = normal(14, n).astype(np.float64), normal(15, n).astype(np.float64)
    base, shifted = metrics.w2(x, y), metrics.w2(x, y + m)
    # The optimal matching is translation invariant, so exactly
    # W2(x, y+m)^2 = W2(x, y)^2 + |m|^2 - 2 m.(mean x - mean y)
    expected = base**2 + m @ m - 2 * m @ (x.mean(0) - y.mean(0))
    assert shifted**2 == pytest.approx(expected, rel=1e-9)
    # and W2(x, x+m) = |m|, so by the triangle inequality | W2(x, y+m) - |m| | <= W2(x, y)
    assert abs(shifted - np.linalg.norm(m)) <= base + 1e-12
    assert base < 0.1 * np.linalg.norm(m)


def test_w2_errors():
    with pytest.raises(ValueError, match="same number"):
        metrics.w2(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="5000"):
        metrics.w2(np.zeros((5001, 2)), np.zeros((5001, 2)))
    assert math.isnan(metrics.w2(np.full((3, 2), np.nan), np.zeros((3, 2))))


def test_sliced_w2():
    n, d, projections = N, 2, 128
    x = normal(16, n, d)
    assert float(metrics.sliced_w2(x, x, KEY)) == 0.0
    assert float(metrics.sliced_w2(x, x[::-1], KEY)) == 0.0
    # y = x + m: each direction gives (theta.m)^2, whose mean over the sphere is |m|^2/d
    # and variance |m|^4 Var(Beta(1/2, (d-1)/2)) = |m|^4 2(d-1) / (d^2 (d+2)).
    m = np.array([2.0, 1.0], np.float32)
    m2 = float(m @ m)
    sd = m2 * math.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / projections)
    value = float(metrics.sliced_w2(x, x + m, KEY, projections=projections))
    assert value**2 == pytest.approx(m2 / d, abs=5 * sd)
    # In one dimension every direction is +-1: sliced W2 is W2.
    x1, y1 = normal(17, n, 1), normal(18, n, 1, shift=0.5)
    assert float(metrics.sliced_w2(x1, y1, KEY)) == pytest.approx(metrics.w2(x1, y1), rel=1e-4)


# --------------------------------------------------------------------------------------
# Sinkhorn


def test_sinkhorn_identical_clouds():
    n = N
    x = normal(19, n)
    result = metrics.sinkhorn(x, x)
    assert bool(result.converged)
    eps = float(result.epsilon)
    mean_cost = float(np.mean(np.sum((x[:, None] - x[None]) ** 2, -1)))
    assert eps == pytest.approx(1e-3 * mean_cost, rel=1e-4)  # relative to the mean cost
    # W2^2 = 0 <= OT_eps <= W2^2 + eps log n (the identity coupling has KL = log n)
    assert -1e-4 <= float(result.cost) <= eps * math.log(n) + 1e-4


def test_sinkhorn_shifted_clouds_within_exact_bounds():
    n, m = N, np.array([2.0, 1.0], np.float32)
    x, y = normal(20, n), normal(21, n, shift=m)
    result = metrics.sinkhorn(x, y)
    assert bool(result.converged)
    cost, eps = float(result.cost), float(result.epsilon)
    exact = metrics.w2(x, y)
    # W2^2 <= OT_eps <= W2^2 + eps log n, up to the dual gap left by the stopping rule
    # (marginal L1 error <= threshold) of at most threshold * max cost.
    max_cost = float(np.max(np.sum((x[:, None] - y[None]) ** 2, -1)))
    gap = 1e-3 * max_cost
    assert exact**2 - gap <= cost <= exact**2 + eps * math.log(n) + gap
    # and W2(x, y) = |m| +- W2(x, y - m) (triangle inequality), so OT_eps is about |m|^2
    r = metrics.w2(x, y - m)
    assert (float(np.linalg.norm(m)) - r) ** 2 - gap <= cost
    assert cost <= (float(np.linalg.norm(m)) + r) ** 2 + eps * math.log(n) + gap


def test_sinkhorn_translation_identity_at_fixed_epsilon():
    n, m = N, np.array([1.5, -2.0], np.float32)
    x, y = normal(22, n), normal(23, n)
    a = metrics.sinkhorn(x, y, 0.05, relative_epsilon=None)
    b = metrics.sinkhorn(x, y + m, 0.05, relative_epsilon=None)
    assert bool(a.converged) and bool(b.converged)
    assert float(a.epsilon) == pytest.approx(0.05) == float(b.epsilon)
    # C(x, y+m)_ij = C_ij - 2 m.(x_i - y_j) + |m|^2: the extra terms only shift the
    # potentials, so OT_eps(x, y+m) = OT_eps(x, y) + |m|^2 - 2 m.(mean x - mean y), up to
    # the dual gaps left by the stopping rule (threshold 1e-3 times the largest cost).
    expected = float(a.cost + m @ m - 2 * m @ (x.mean(0) - y.mean(0)))
    max_cost = float(np.max(np.sum((x[:, None] - y[None] - m) ** 2, -1)))
    assert float(b.cost) == pytest.approx(expected, abs=2e-3 * max_cost)


def test_sinkhorn_subsamples():
    x, y = normal(24, 700), normal(25, N)
    with pytest.raises(ValueError, match="key"):
        metrics.sinkhorn(x, y, max_points=N)
    result = metrics.sinkhorn(x, y, key=KEY, max_points=N)
    assert bool(result.converged) and 0 < float(result.cost) < 1.0


# --------------------------------------------------------------------------------------
# modes


@pytest.fixture(scope="module")
def gmm40():
    return sdekit.create("target", "gmm40")


def test_mode_coverage_on_exact_gmm40_samples(gmm40):
    n, k = 4000, 40
    x = mixture_samples(gmm40.mixture, 26, n)
    assert float(metrics.mode_coverage(x, gmm40.mixture)) == 1.0
    counts = np.asarray(metrics.mode_counts(x, gmm40.mixture))
    assert counts.sum() == n
    # For uniform occupancy log K - H(p_hat) ~ chi2_{K-1} / (2n); its 1 - 1e-6 quantile is
    # below 100 for K - 1 = 39.
    assert 1 - float(metrics.emc(x, gmm40.mixture)) < 100 / (2 * n) / math.log(k)


def test_mode_coverage_one_mode_and_half_the_modes(gmm40):
    means = gmm40.mixture.means
    one = means[3] + 0.1 * normal(27)
    assert float(metrics.mode_coverage(one, gmm40.mixture)) == pytest.approx(1 / 40)
    assert float(metrics.emc(one, gmm40.mixture)) == pytest.approx(0.0, abs=1e-6)
    half = jnp.repeat(means[:20], N // 20, axis=0)  # N / 20 points exactly on each of 20 means
    assert float(metrics.mode_coverage(half, gmm40.mixture)) == pytest.approx(0.5)
    assert float(metrics.emc(half, gmm40.mixture)) == pytest.approx(math.log(20) / math.log(40), rel=1e-5)


def test_mode_coverage_threshold_and_nonfinite(gmm40):
    means = np.asarray(gmm40.mixture.means)
    # 400 samples: 392 on mode 0, 5 on mode 1 (>= 1% = 4), 3 on mode 2 (< 4)
    x = np.repeat(means[:3], [392, 5, 3], axis=0)
    assert float(metrics.mode_coverage(x, gmm40.mixture)) == pytest.approx(2 / 40)
    assert float(metrics.mode_coverage(x, gmm40.mixture, threshold=0.005)) == pytest.approx(3 / 40)
    # Non-finite samples count in n but go to no component: with 200 NaN rows, 192 / 3 / 5
    # finite ones, 1% of n = 400 is 4 and mode 1 is not covered (it would be with n = 200).
    y = np.concatenate([np.repeat(means[:3], [192, 3, 5], axis=0), np.full((200, 2), np.nan)])
    assert float(metrics.mode_counts(y, gmm40.mixture).sum()) == 200
    assert float(metrics.mode_coverage(y, gmm40.mixture)) == pytest.approx(2 / 40)


# --------------------------------------------------------------------------------------
# the registered diagnostics


def test_diagnostics_are_bounded_by_default():
    # the most points each default diagnostic compares, whatever the number of samples
    bounds = {"eubo": {"points": 2000},
              "sample-quality": {"mmd_points": 2000},
              "sinkhorn": {"points": 2000, "max_iterations": 1000},
              "w2": {"max_points": 2000, "sliced_points": 10_000}}
    for name, options in bounds.items():
        diag = sdekit.create("diagnostic", name)
        assert {k: getattr(diag, k) for k in options} == options, name


def test_the_default_diagnostics_declare_their_cost():
    # what the run's time budget compares: 0 where a diagnostic does not apply; eubo's is
    # the run's compilation and its sampling scaled to its points; sinkhorn's worst case
    # is two compilations and max_iterations iterations of the same timed cost
    seconds = {"train_seconds": 0.0, "compile_seconds": 1.5, "sample_seconds": 0.4}
    target = sdekit.create("target", "gaussian")
    samples = sdekit.Samples(normal(0, 5000), None)
    parts = {"target": target, "samples": samples}

    def cost(name, **options):
        return sdekit.create("diagnostic", name, **options).cost(seconds, **parts)

    assert cost("weights") == 0.0
    pis = sdekit.compose("gaussian", "pis")
    assert sdekit.create("diagnostic", "eubo").cost(seconds, sampler=pis, **parts) == (
        pytest.approx(1.5 + 0.4 * 2000 / 5000))
    assert cost("eubo") == 0.0  # no sampler with backward weights
    iteration = cost("sinkhorn", max_iterations=1) - 3.0
    assert iteration > 0
    assert cost("sinkhorn") == pytest.approx(3.0 + 1000 * iteration)
    assert cost("sample-quality") == pytest.approx(1.5 + 2 * iteration)
    for name in ("sample-quality", "sinkhorn"):  # no exact samples to compare with
        assert sdekit.create("diagnostic", name).cost(seconds, samples=samples) == 0.0


def test_diagnostics_are_registered():
    reg = sdekit.registry()
    for name in ("weights", "sample-quality", "eubo", "sinkhorn", "w2"):
        assert reg.get("diagnostic", name).plugin == "diagnostics"


def test_weights_diagnostic_from_constructed_samples():
    target = sdekit.create("target", "gaussian")  # log Z = 1.5
    diag = sdekit.create("diagnostic", "weights")
    x = normal(0) + 1.0
    out = diag(KEY, target=target, samples=sdekit.Samples(x, jnp.full(N, 1.5)))
    assert out["log_Z"] == pytest.approx(1.5, abs=1e-6)
    assert out["log_Z_error"] == pytest.approx(0.0, abs=1e-6)
    # equal weights (a resampled population) measure nothing: no ess of 1, no elbo = log Z
    assert set(out) == {"log_Z", "log_Z_error", "n_nonfinite_weights"}
    assert out["n_nonfinite_weights"] == 0
    lw = target.log_prob(x[0]) - jax.vmap(target.log_prob)(x)  # unequal
    out = diag(KEY, target=target, samples=sdekit.Samples(x, lw))
    assert 0 < out["ess"] < 1 and out["pareto_k"] == metrics.pareto_k(lw)
    lw = jnp.zeros(N).at[0].set(jnp.nan).at[1].set(-jnp.inf)
    out = diag(KEY, target=target, samples=sdekit.Samples(x, lw))
    assert out["n_nonfinite_weights"] == 2 and math.isnan(out["log_Z"])
    assert diag(KEY, target=target, samples=sdekit.Samples(x)) == {}
    assert "log_Z_error" not in diag(KEY, samples=sdekit.Samples(x, lw))


class _ExactPathSampler(sdekit.AbstractPathSampler):
    """Exact draws of a target with a known log Z: every trajectory's log-weight is log Z."""

    target: sdekit.AbstractTarget

    def sample(self, key, n):
        return sdekit.Samples(self.target.sample(key, n), jnp.full(n, self.target.log_Z))

    def backward_log_weights(self, key, x):
        return jnp.full(x.shape[0], self.target.log_Z)


def test_eubo_diagnostic_for_a_path_sampler():
    target = sdekit.create("target", "gaussian")  # log Z = 1.5
    sampler = _ExactPathSampler(target)
    samples = sampler.sample(KEY, N)
    diag = sdekit.create("diagnostic", "eubo")
    out = diag(KEY, target=target, sampler=sampler, samples=samples)
    assert out == {"eubo": pytest.approx(1.5), "eubo_points": N}
    few = sdekit.create("diagnostic", "eubo", points=10)
    assert few(KEY, target=target, sampler=sampler, samples=samples)["eubo_points"] == 10
    assert diag(KEY, target=_NoExactSamples(), sampler=sampler, samples=samples) == {}
    assert diag(KEY, target=target, sampler=sdekit.compose("gaussian", "smc"),
                samples=samples) == {}  # no backward weights


def test_weights_diagnostic_with_a_real_sampler():
    if "reverse-sde" not in sdekit.registry().entries["sampler"]:
        pytest.skip("the samplers plugin is not installed")
    sampler = sdekit.compose("gaussian", {"name": "reverse-sde", "steps": 20})
    n = N
    samples = sampler.sample(KEY, n)
    out = sdekit.create("diagnostic", "weights")(KEY, target=sampler.target, samples=samples)
    assert out["n_nonfinite_weights"] == 0 and 0 < out["ess"] <= 1
    # delta method: sd(log Z_hat) ~ sqrt((1/ess - 1) / n) for normalised ess
    sd = math.sqrt((1 / out["ess"] - 1) / n)
    assert abs(out["log_Z_error"]) < 5 * sd + 1e-3
    assert out["elbo"] <= out["log_Z"]  # Jensen, on any sample


def test_sample_quality_and_sinkhorn_diagnostics(gmm40):
    quality = sdekit.create("diagnostic", "sample-quality", mmd_points=N)
    ot = sdekit.create("diagnostic", "sinkhorn", points=N)

    def both(x):
        samples = sdekit.Samples(x)
        return {**quality(KEY, target=gmm40, samples=samples),
                **ot(KEY, target=gmm40, samples=samples)}

    n = N
    exact = mixture_samples(gmm40.mixture, 28, n)
    out = both(exact)
    assert set(out) == {"mmd", "sinkhorn", "sinkhorn_converged", "mode_coverage", "emc",
                        "mmd_points", "sinkhorn_points"}
    assert out["mmd_points"] == out["sinkhorn_points"] == n
    assert out["mode_coverage"] == 1.0 and out["emc"] > 0.97
    assert abs(out["mmd"]) < 5 * math.sqrt(4 / (n * (n - 1)) + 4 / n**2)  # null, E k~^2 <= 1
    assert out["sinkhorn_converged"] is True and out["sinkhorn"] > 0
    # samples on one mode: poor coverage and a clearly larger MMD and Sinkhorn cost
    one = np.asarray(gmm40.mixture.means[0]) + 0.1 * normal(29, n)
    bad = both(one)
    assert bad["mode_coverage"] == pytest.approx(1 / 40) and bad["emc"] == pytest.approx(0.0)
    assert bad["mmd"] > 100 * abs(out["mmd"]) and bad["sinkhorn"] > 10 * out["sinkhorn"]
    # non-finite rows are dropped from mmd / sinkhorn, but count against coverage
    with_nan = np.concatenate([exact, np.full((n, 2), np.nan)])
    out2 = both(with_nan)
    assert np.isfinite(out2["mmd"]) and np.isfinite(out2["sinkhorn"])
    assert out2["mmd_points"] == out2["sinkhorn_points"] == n
    counts = np.asarray(metrics.mode_counts(exact, gmm40.mixture))
    assert out2["mode_coverage"] == np.mean(counts >= 0.01 * 2 * n)  # n doubled by the NaNs


class _NoExactSamples(sdekit.AbstractTarget):
    dim: int = 2

    def log_prob(self, x):
        return -0.5 * jnp.sum(x**2)


def test_diagnostics_without_exact_samples():
    samples = sdekit.Samples(normal(30))
    for name in ("sample-quality", "sinkhorn", "w2"):
        diag = sdekit.create("diagnostic", name)
        assert diag(KEY, target=_NoExactSamples(), samples=samples) == {}


def test_w2_diagnostic():
    target = sdekit.create("target", "gaussian")
    diag = sdekit.create("diagnostic", "w2", max_points=300)
    exact = normal(31) + 1.0  # the default gaussian target: N(1, I)
    good = diag(KEY, target=target, samples=sdekit.Samples(exact))
    far = diag(KEY, target=target, samples=sdekit.Samples(exact + 3.0))
    assert set(good) == {"w2", "sliced_w2", "w2_points", "sliced_w2_points"}
    assert good["w2_points"] == 300 and good["sliced_w2_points"] == N
    # |W2(x + m, ref) - |m|| <= W2(x, ref): far is about |m| = 3 sqrt 2, good is small
    # (the same key gives the same subsample and reference points)
    assert abs(far["w2"] - 3 * math.sqrt(2)) <= good["w2"] + 1e-6
    assert good["w2"] < 0.5 and good["sliced_w2"] < 0.5 < far["sliced_w2"]


def test_the_diagnostics_plugin_re_exports_the_core_metrics():
    diagnostics = pytest.importorskip("sdekit_diagnostics")
    for name in metrics.__all__:
        assert getattr(diagnostics, name) is getattr(metrics, name), name
