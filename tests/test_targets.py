"""The first-party targets plugin (`sdekit_targets`).

Statistical checks use fixed seeds; every tolerance is a multiple of a standard error
computed from the sample size (5 SE for moments, 4 SE for importance-sampling log Z), and
distribution checks are chi-square / KS tests at p > 1e-3. References (densities, moments,
log Z) are computed here independently, in float64, with NumPy / SciPy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

import sdekit
from sdekit_targets import GMM, Funnel, Gaussian, ManyWell32, ManyWell54, gmm40
from sdekit_targets._many_well import asymmetric_well_envelope, double_well_envelope

NAMES = ["gaussian", "gmm", "gmm40", "funnel", "many-well-54", "many-well-32"]
P_MIN = 1e-3  # smallest acceptable p-value of a goodness-of-fit test


def key(seed: int):
    return jax.random.PRNGKey(seed)


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def within(estimate, truth, se, k=5.0):
    """`|estimate - truth| <= k * se`, elementwise, with a readable failure."""
    estimate, truth, se = f64(estimate), f64(truth), f64(se)
    ok = np.abs(estimate - truth) <= k * se
    assert np.all(ok), f"estimate {estimate} vs truth {truth}: off by more than {k} SE = {k * se}"


def is_log_Z(log_w) -> tuple[float, float]:
    """Importance-sampling log Z estimate and its delta-method standard error."""
    log_w = f64(log_w)
    w = np.exp(log_w - log_w.max())
    est = log_w.max() + math.log(w.mean())
    se = w.std(ddof=1) / (math.sqrt(len(w)) * w.mean())
    return est, se


def chi_square_equal_bins(samples, log_density, lo, hi, bins=40):
    """Chi-square p-value of 1-D samples against `exp(log_density)` (normalised here).

    Bin edges are (numerical) quantiles of the density, so every bin expects about the
    same count; the bin probabilities themselves are integrated by `quad`.
    """
    grid = np.linspace(lo, hi, 400_001)
    dens = np.exp(log_density(grid))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    inner = np.interp(np.arange(1, bins) / bins, cdf, grid)
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    mass = [
        integrate.quad(lambda t: math.exp(log_density(t)), a, b, epsabs=0, epsrel=1e-10, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:])
    ]
    probs = np.array(mass) / np.sum(mass)
    observed = np.histogram(f64(samples), edges)[0]
    return stats.chisquare(observed, probs * len(samples)).pvalue


# ---------------------------------------------------------------- registry and generic behaviour


def test_registry_lists_every_target():
    names = sdekit.registry().names("target")
    assert set(NAMES) <= set(names)
    for name in NAMES:
        assert sdekit.registry().get("target", name).plugin == "targets"


@pytest.mark.parametrize("name", NAMES)
def test_generic_contract(name):
    target = sdekit.create("target", name)
    assert isinstance(target, sdekit.AbstractTarget)
    assert type(target.dim) is int and target.dim >= 1
    assert target.has_exact_samples
    assert isinstance(target.log_Z, float) and math.isfinite(target.log_Z)
    assert sdekit.registry().get("target", name).description  # shown by `sdekit list`
    sdekit.check_target(target)

    d = target.dim
    x = 2.0 * jax.random.normal(key(0), (64, d))
    # jit with the target as an argument: it is a pytree with `dim` static
    values, grads = jax.jit(lambda t, x: jax.vmap(jax.value_and_grad(t.log_prob))(x))(target, x)
    assert values.shape == (64,) and grads.shape == (64, d)
    assert bool(jnp.all(jnp.isfinite(values)) & jnp.all(jnp.isfinite(grads)))

    samples = jax.jit(lambda t, k: t.sample(k, 100))(target, key(1))
    assert samples.shape == (100, d)
    assert bool(jnp.all(jnp.isfinite(samples)))
    assert bool(jnp.all(jnp.isfinite(jax.vmap(target.log_prob)(samples))))
    # eager and jitted sampling agree
    np.testing.assert_allclose(target.sample(key(1), 100), samples, rtol=1e-5, atol=1e-5)

    mixture = target.mixture
    if name in ("gaussian", "gmm", "gmm40"):
        assert isinstance(mixture, sdekit.GaussianMixture) and mixture.dim == d
        np.testing.assert_allclose(
            jax.jit(jax.vmap(mixture.log_prob))(x) + target.log_Z, values, rtol=1e-5, atol=1e-4
        )
    else:
        assert mixture is None


# ---------------------------------------------------------------- gaussian


MEAN3 = np.array([1.0, -2.0, 0.5])
COV3 = np.array([[2.0, 0.6, 0.3], [0.6, 1.0, -0.2], [0.3, -0.2, 0.5]])


def test_gaussian_density_and_moments():
    target = sdekit.create("target", "gaussian", mean=MEAN3, cov=COV3, log_Z=-0.7)
    assert target.dim == 3 and target.log_Z == -0.7
    x = jax.random.normal(key(2), (50, 3)) * 2
    expected = stats.multivariate_normal(MEAN3, COV3).logpdf(f64(x)) - 0.7
    np.testing.assert_allclose(jax.vmap(target.log_prob)(x), expected, rtol=1e-5, atol=1e-4)

    n = 20_000
    s = f64(target.sample(key(3), n))
    within(s.mean(0), MEAN3, np.sqrt(np.diag(COV3) / n))
    # SE of a sample covariance entry of a Gaussian: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = np.sqrt((np.outer(np.diag(COV3), np.diag(COV3)) + COV3**2) / n)
    within(np.cov(s.T), COV3, se_cov)


def test_gaussian_defaults_and_forms_of_covariance():
    t = Gaussian()
    assert t.dim == 2 and t.log_Z == 1.5
    np.testing.assert_allclose(t.mean, [1.0, 1.0])
    np.testing.assert_allclose(t.cov, np.eye(2))
    assert Gaussian(mean=[0.0, 0.0, 0.0]).dim == 3  # dim inferred
    assert Gaussian(dim=4).mean.shape == (4,)
    np.testing.assert_allclose(Gaussian(dim=3, scale=2.0).cov, 4 * np.eye(3))
    np.testing.assert_allclose(Gaussian(scale=[1.0, 3.0]).cov, np.diag([1.0, 9.0]))
    np.testing.assert_allclose(Gaussian(dim=2, cov=2.0).cov, 2 * np.eye(2))
    np.testing.assert_allclose(Gaussian(cov=[1.0, 3.0]).cov, np.diag([1.0, 3.0]))
    np.testing.assert_allclose(Gaussian(cov=COV3).cov, COV3, rtol=1e-6)


def test_gaussian_log_Z_by_importance_sampling():
    target = sdekit.create("target", "gaussian")  # N(1, I) in d = 2, log Z = 1.5
    n, s = 50_000, 2.0
    x = s * jax.random.normal(key(4), (n, 2))
    log_q = stats.norm(0, s).logpdf(f64(x)).sum(1)
    est, se = is_log_Z(f64(jax.vmap(target.log_prob)(x)) - log_q)
    assert se < 0.05
    within(est, target.log_Z, se, k=4)


# ---------------------------------------------------------------- gmm and gmm40


WEIGHTS4 = np.array([0.1, 0.2, 0.3, 0.4])
MEANS4 = np.array([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0], [0.0, -20.0]])
COVS4 = np.array([np.eye(2), [[2.0, 0.5], [0.5, 1.0]], 0.5 * np.eye(2), [[1.0, -0.3], [-0.3, 3.0]]])


def test_gmm_density_and_component_occupancy():
    target = sdekit.create("target", "gmm", weights=2 * WEIGHTS4, means=MEANS4, covs=COVS4, log_Z=0.7)
    np.testing.assert_allclose(target.weights, WEIGHTS4, rtol=1e-6)  # normalised
    x = 15 * jax.random.normal(key(5), (50, 2))
    comps = [stats.multivariate_normal(m, c).logpdf(f64(x)) for m, c in zip(MEANS4, COVS4)]
    expected = special.logsumexp(np.stack(comps, 1) + np.log(WEIGHTS4), axis=1) + 0.7
    np.testing.assert_allclose(jax.vmap(target.log_prob)(x), expected, rtol=1e-5, atol=1e-4)

    n = 20_000
    s = target.sample(key(6), n)
    # components are 20 apart, so the most responsible one is the one that drew the sample
    label = np.asarray(jnp.argmax(jax.jit(jax.vmap(target.component_log_probs))(s), axis=1))
    counts = np.bincount(label, minlength=4)
    assert stats.chisquare(counts, WEIGHTS4 * n).pvalue > P_MIN
    s = f64(s)
    for k in range(4):
        within(s[label == k].mean(0), MEANS4[k], np.sqrt(np.diag(COVS4[k]) / counts[k]))


def test_gmm_log_Z_by_importance_sampling():
    target = GMM(weights=[0.3, 0.7], means=[[-2.0, 1.0], [2.0, -1.0]], covs=[1.0, 0.5], log_Z=0.7)
    n, s = 50_000, 3.0
    x = s * jax.random.normal(key(7), (n, 2))
    log_q = stats.norm(0, s).logpdf(f64(x)).sum(1)
    est, se = is_log_Z(f64(jax.vmap(target.log_prob)(x)) - log_q)
    assert se < 0.05
    within(est, 0.7, se, k=4)


def test_gmm_forms_of_covariance():
    means = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    np.testing.assert_allclose(GMM(means=means).covs, np.broadcast_to(np.eye(3), (2, 3, 3)))
    np.testing.assert_allclose(GMM(means=means, covs=2.0).covs[1], 2 * np.eye(3))
    np.testing.assert_allclose(GMM(means=means, covs=[1.0, 4.0]).covs[1], 4 * np.eye(3))
    diag = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    np.testing.assert_allclose(GMM(means=means, covs=diag).covs[1], np.diag(diag[1]))
    np.testing.assert_allclose(GMM(means=[[0.0, 0.0]], covs=[COVS4[1]]).covs[0], COVS4[1])
    np.testing.assert_allclose(GMM(means=means).weights, [0.5, 0.5])


def test_gmm40_definition():
    for dim in (2, 3):
        target = sdekit.create("target", "gmm40", dim=dim)
        # float32 draws, the default-precision definition, also under jax_enable_x64
        means = jax.random.uniform(
            jax.random.PRNGKey(0), (40, dim), dtype=jnp.float32, minval=-40, maxval=40
        )
        np.testing.assert_array_equal(target.means, means)
        np.testing.assert_allclose(target.weights, np.full(40, 1 / 40), rtol=1e-6)
        np.testing.assert_array_equal(target.covs, np.broadcast_to(np.eye(dim), (40, dim, dim)))
        assert target.log_Z == 0.0 and target.dim == dim
    x = 30 * jax.random.normal(key(8), (20, 2))
    target = gmm40()
    mu = f64(target.means)
    sq = ((f64(x)[:, None, :] - mu[None]) ** 2).sum(-1)
    expected = special.logsumexp(-0.5 * sq, axis=1) - math.log(40) - math.log(2 * math.pi)
    np.testing.assert_allclose(jax.vmap(target.log_prob)(x), expected, rtol=1e-5, atol=1e-4)
    # overall mean: SE from the mixture covariance I + Cov(means)
    n = 20_000
    s = f64(target.sample(key(9), n))
    total_var = 1 + mu.var(0)
    within(s.mean(0), mu.mean(0), np.sqrt(total_var / n))


# ---------------------------------------------------------------- funnel


def test_funnel_density():
    target = sdekit.create("target", "funnel")
    assert target.dim == 10 and target.log_Z == 0.0
    x = f64(jax.random.normal(key(10), (50, 10)) * jnp.array([3.0] + [1.0] * 9))
    # a product of normalised densities, so log Z = 0 exactly
    expected = stats.norm(0, 3).logpdf(x[:, 0]) + stats.norm.logpdf(
        x[:, 1:], 0, np.exp(x[:, :1] / 2)
    ).sum(1)
    np.testing.assert_allclose(jax.vmap(target.log_prob)(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-3)
    small = Funnel(dim=3, scale=1.5)
    np.testing.assert_allclose(
        small.log_prob(jnp.array([0.4, -1.0, 2.0])),
        stats.norm(0, 1.5).logpdf(0.4) + stats.norm.logpdf([-1.0, 2.0], 0, math.exp(0.2)).sum(),
        rtol=1e-5,
    )


def test_funnel_samples():
    target = sdekit.create("target", "funnel")
    n = 20_000
    s = f64(target.sample(key(11), n))
    x0 = s[:, 0]
    within(x0.mean(), 0.0, 3 / math.sqrt(n))
    within(x0.var(ddof=1), 9.0, 9 * math.sqrt(2 / (n - 1)))  # SE of a Gaussian sample variance
    # conditional structure: x_i e^{-x_0/2} are iid N(0, 1), independent of x_0
    z = s[:, 1:] * np.exp(-x0[:, None] / 2)
    m = z.size
    within(z.mean(), 0.0, 1 / math.sqrt(m))
    within(z.var(), 1.0, math.sqrt(2 / m))
    assert stats.kstest(z.ravel(), "norm").pvalue > P_MIN
    within(np.corrcoef(x0, (z**2).mean(1))[0, 1], 0.0, 1 / math.sqrt(n))


# ---------------------------------------------------------------- many-well


def mw54_log_f(x):
    return -((x**2 - 4) ** 2)


def mw32_log_f(a):
    return -(a**4) + 6 * a**2 + 0.5 * a


def quad(fn):
    return integrate.quad(fn, -np.inf, np.inf, epsabs=0, epsrel=1e-12, limit=200)[0]


def test_many_well_log_Z_matches_design():
    z1 = quad(lambda t: math.exp(mw54_log_f(t)))
    assert f"{ManyWell54().log_Z:.4f}" == "-0.5411"
    assert ManyWell54().log_Z == pytest.approx(5 * math.log(z1), abs=1e-9)
    shift = 10.0
    z2 = quad(lambda t: math.exp(mw32_log_f(t) - shift))
    expected = 16 * (math.log(z2) + shift + 0.5 * math.log(2 * math.pi))
    assert f"{ManyWell32().log_Z:.4f}" == "164.6957"
    assert ManyWell32().log_Z == pytest.approx(expected, abs=1e-8)


def test_many_well_log_prob():
    x = 2 * jax.random.normal(key(12), (20, 32))
    xf = f64(x)
    a, b = xf[:, 0::2], xf[:, 1::2]
    expected = -(a**4 - 6 * a**2 - 0.5 * a + 0.5 * b**2).sum(1)
    np.testing.assert_allclose(jax.vmap(ManyWell32().log_prob)(x), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        jax.vmap(ManyWell54().log_prob)(x[:, :5]), mw54_log_f(xf[:, :5]).sum(1), rtol=1e-5, atol=1e-3
    )


@pytest.mark.parametrize("envelope", [double_well_envelope, asymmetric_well_envelope])
def test_rejection_envelope_bounds_the_density(envelope):
    env = envelope()
    x = np.random.default_rng(0).uniform(-8, 8, 1_000_000)
    assert np.max(env.log_f(x) - env.log_q(x)) <= env.log_M
    assert 0.25 < env.acceptance <= 1


def test_many_well_54_samples():
    target = ManyWell54()
    n = 20_000
    s = f64(target.sample(key(13), n))
    z1 = quad(lambda t: math.exp(mw54_log_f(t)))
    flat = s.ravel()  # coordinates are iid
    assert chi_square_equal_bins(flat, lambda t: mw54_log_f(t) - math.log(z1), -5, 5) > P_MIN
    ex2 = quad(lambda t: t**2 * math.exp(mw54_log_f(t))) / z1
    within((flat**2).mean(), ex2, (flat**2).std() / math.sqrt(flat.size))
    # independence and symmetry: the 32 sign patterns (modes) are equally likely
    pattern = ((s > 0) * (2 ** np.arange(5))).sum(1)
    assert stats.chisquare(np.bincount(pattern, minlength=32)).pvalue > P_MIN


def test_many_well_32_samples():
    target = ManyWell32()
    n = 4_000
    s = f64(target.sample(key(14), n))
    a, b = s[:, 0::2].ravel(), s[:, 1::2].ravel()
    shift = 10.0
    z = quad(lambda t: math.exp(mw32_log_f(t) - shift))
    log_density = lambda t: mw32_log_f(t) - shift - math.log(z)  # noqa: E731
    assert chi_square_equal_bins(a, log_density, -4, 4) > P_MIN
    ex2 = quad(lambda t: t**2 * math.exp(log_density(t)))
    within((a**2).mean(), ex2, (a**2).std() / math.sqrt(a.size))
    p_right = integrate.quad(lambda t: math.exp(log_density(t)), 0, np.inf)[0]
    within((a > 0).mean(), p_right, math.sqrt(p_right * (1 - p_right) / a.size))
    # b ~ N(0, 1), independent of a
    within(b.mean(), 0.0, 1 / math.sqrt(b.size))
    within(b.var(), 1.0, math.sqrt(2 / b.size))
    within(np.corrcoef(a, b)[0, 1], 0.0, 1 / math.sqrt(a.size))


def test_many_well_54_log_Z_by_importance_sampling():
    # proposal independent of the plugin's envelope: per coordinate 0.5 N(-2, s^2) + 0.5 N(2, s^2)
    target = ManyWell54()
    n, s = 100_000, 0.5
    k_sign, k_noise = jax.random.split(key(15))
    sign = 2.0 * jax.random.bernoulli(k_sign, 0.5, (n, 5)) - 1
    x = 2 * sign + s * jax.random.normal(k_noise, (n, 5))
    xf = f64(x)
    log_q = np.logaddexp(stats.norm(-2, s).logpdf(xf), stats.norm(2, s).logpdf(xf)).sum(1) - 5 * math.log(2)
    est, se = is_log_Z(f64(jax.vmap(target.log_prob)(x)) - log_q)
    assert se < 0.05
    within(est, target.log_Z, se, k=4)


# ---------------------------------------------------------------- bad options


BAD = [
    ("gaussian", {"dim": 0}, r"dim must be an integer >= 1, got 0"),
    ("gaussian", {"dim": 2.5}, r"dim must be an integer >= 1, got 2.5"),
    ("gaussian", {"dim": 2, "mean": [1.0, 2.0, 3.0]}, r"mean must have shape \(dim,\) = \(2,\), got shape \(3,\)"),
    ("gaussian", {"scale": -1.0}, r"scale must be positive, got -1.0"),
    ("gaussian", {"dim": 2, "scale": [1.0, 2.0, 3.0]}, r"scale must have shape .*\(2,\).*got shape \(3,\)"),
    ("gaussian", {"cov": [[1.0, 2.0], [2.0, 1.0]]}, r"cov must be positive definite"),
    ("gaussian", {"cov": [[1.0, 0.5], [0.0, 1.0]]}, r"cov must be symmetric"),
    ("gaussian", {"cov": [1.0, -1.0]}, r"cov must be positive"),
    ("gaussian", {"scale": 1.0, "cov": 1.0}, r"give scale or cov, not both"),
    ("gaussian", {"log_Z": float("nan")}, r"log_Z must be a finite real number"),
    ("gaussian", {"mean": "abc"}, r"mean must be a number or an array of numbers"),
    ("gaussian", {"mean": [0.0, float("inf")]}, r"mean must be finite"),
    ("gmm", {"means": [1.0, 2.0]}, r"means must have shape \(K, d\).*got shape \(2,\)"),
    ("gmm", {"weights": [0.5, 0.5, 0.0]}, r"weights must have shape \(K,\) = \(2,\).*got shape \(3,\)"),
    ("gmm", {"weights": [-1.0, 2.0]}, r"weights must be non-negative"),
    ("gmm", {"weights": [0.0, 0.0]}, r"weights must have a positive sum"),
    ("gmm", {"covs": np.ones((2, 3, 3))}, r"covs must have shape .*\(2, 2, 2\).*got shape \(2, 3, 3\)"),
    ("gmm", {"covs": [np.eye(2).tolist(), [[1.0, 2.0], [2.0, 1.0]]]}, r"covs\[1\] \(component 1\) must be positive definite"),
    ("gmm", {"covs": [1.0, 0.0]}, r"covs must be positive"),
    ("gmm40", {"dim": 0}, r"dim must be an integer >= 1"),
    ("funnel", {"dim": 1}, r"dim must be an integer >= 2, got 1"),
    ("funnel", {"dim": 3.0}, r"dim must be an integer >= 2, got 3.0"),
    ("funnel", {"scale": 0.0}, r"scale must be positive, got 0.0"),
    ("many-well-54", {"dim": 3}, r"has no option 'dim'"),
    ("many-well-32", {"dim": 3}, r"has no option 'dim'"),
]


@pytest.mark.parametrize("name, options, match", BAD)
def test_bad_options(name, options, match):
    with pytest.raises(sdekit.CompositionError, match=match):
        sdekit.create("target", name, **options)


def test_bad_options_raise_value_error_directly():
    with pytest.raises(ValueError, match="scale must be positive"):
        Funnel(scale=-3.0)
    with pytest.raises(ValueError, match="dim must be an integer"):
        gmm40(dim=-1)
    assert Funnel(dim=np.int64(4)).dim == 4  # NumPy integers are integers


def test_unknown_target_name_suggests():
    with pytest.raises(sdekit.UnknownNameError, match="many-well-54"):
        sdekit.create("target", "many-well-45")
