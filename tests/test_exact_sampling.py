"""Exact-score samplers (`reverse-sde`, `pf-ode` with the `exact` score) against exact samples.

With the exact score $\\nabla\\log p_t$ of a Gaussian-mixture target, the reverse SDE and the
probability-flow ODE started from $p_{t_{\\max}}$ have law $p_{t_{\\min}}$; the only errors
left are (i) the prior $\\nu \\ne p_{t_{\\max}}$, (ii) $p_{t_{\\min}} \\ne \\pi$ and (iii) time
discretisation. The process configurations below make (i) and (ii) negligible, and
`test_configurations_make_prior_and_t_min_errors_negligible` bounds both analytically
(KL of the mixtures by joint convexity, so total variation by Pinsker). The samples are then
compared with exact target samples (never with the code's own output) by

- a chi-square contingency test of mode occupancy (each point assigned to its most
  responsible component, for sampler and exact points alike), p > 1e-3 with fixed seeds;
- the unbiased MMD^2 (Gaussian kernel, bandwidth by the median heuristic on exact samples)
  below the 1 - 1e-3 quantile of its null distribution at the same sample size (the
  spectral approximation of the degenerate U-statistic from exact samples;
  `test_mmd_null_matches_replicates` checks it against exact-vs-exact replicates).

The PF-ODE's log-likelihood is checked against the analytic Gaussian density of
$p_{t_{\\min}}$, and its log-weights against the analytic $\\log Z$.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.sparse.linalg import eigsh
from scipy.spatial.distance import pdist

import sdekit

try:
    from sdekit.metrics import mmd
except ImportError:  # the diagnostics plugin is written concurrently; same estimator
    mmd = None

N = 2000  # samples per side
STEPS = 500  # reverse-SDE steps
P_MIN = 1e-3


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def mmd2(x, y, bandwidth: float) -> float:
    """Unbiased MMD^2 with the Gaussian kernel `exp(-|a-b|^2 / (2 h^2))`."""
    if mmd is not None:
        return float(mmd(x, y, bandwidth))
    return mmd2_and_null_std(f64(x), f64(y), bandwidth)[0]


def gaussian_gram(a, b, h):
    d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return np.exp(-np.maximum(d2, 0.0) / (2 * h**2))


def mmd2_and_null_std(x, y, h) -> tuple[float, float]:
    """MMD^2_u of equal-size samples and, if they have the same law, its standard deviation.

    With `H_ij = k(x_i,x_j) + k(y_i,y_j) - k(x_i,y_j) - k(x_j,y_i)`, MMD^2_u is the mean of
    `H_ij` over `i != j`, a degenerate U-statistic under the null, whose variance is
    `2 E[H^2] / (n (n - 1))` to leading order (Gretton et al. 2012, JMLR, sec. 5). NumPy,
    float64 (no compilation).
    """
    n = x.shape[0]
    kxy = gaussian_gram(x, y, h)
    H = gaussian_gram(x, x, h) + gaussian_gram(y, y, h) - kxy - kxy.T
    np.fill_diagonal(H, 0.0)
    mean = H.sum() / (n * (n - 1))
    second_moment = np.sum(H**2) / (n * (n - 1))
    return float(mean), float(np.sqrt(2 * second_moment / (n * (n - 1))))


def is_log_Z(log_w) -> tuple[float, float]:
    """Importance-sampling estimate of log Z and its delta-method standard error."""
    log_w = f64(log_w)
    assert np.all(np.isfinite(log_w))
    w = np.exp(log_w - log_w.max())
    return log_w.max() + math.log(w.mean()), w.std(ddof=1) / (math.sqrt(w.size) * w.mean())


# ---------------------------------------------------------------------------- targets


def gmm10():
    """A 10-d mixture of 5 unequal-weight components, means ~ N(0, 5^2 I), full covariances."""
    rng = np.random.RandomState(0)
    K, d = 5, 10
    means = 5.0 * rng.normal(size=(K, d))
    A = rng.normal(size=(K, d, d)) / math.sqrt(d)
    covs = A @ np.swapaxes(A, 1, 2) + 0.3 * np.eye(d)  # eigenvalues ~ 0.3 .. 4
    return sdekit.create(
        "target", "gmm", weights=[0.1, 0.15, 0.2, 0.25, 0.3], means=means, covs=covs
    )


TARGETS = {"gmm40": lambda: sdekit.create("target", "gmm40"), "gmm10": gmm10}

# Process configurations in which the exact-score samplers are correct, with the grid
# spacing each needs (the analytic bounds are asserted by
# test_configurations_make_prior_and_t_min_errors_negligible):
PROCESSES = {
    # VP with stationary std sigma = 30, the scale of the data (gmm40 means reach |mu| ~ 57):
    # with beta_max = 20, alpha_T = e^{-5.0}, p_T = N(0, 30^2 I) up to KL < 1e-4. (The default
    # sigma = 1 leaves alpha_T |mu| ~ 0.3 against a unit prior, KL ~ 2e-2 on gmm40.)
    # t_min = 1e-5 leaves noise of variance 9e-4 at the end, against unit components, and
    # the "quadratic" grid (h = 4e-6 at the data end) resolves the sharp score there; a
    # uniform grid (h = 2e-3, EM noise std 0.4 per step) inflates the modes by ~10%.
    "vp": ({"name": "vp", "sigma": 30.0, "t_min": 1e-5}, "quadratic"),
    # VE with sigma_max = 1000 >> 40: KL(p_T || N(0, sigma_max^2 I)) <= E|mu|^2 / (2 sigma_max^2)
    # ~ 5e-4 (the default sigma_max = 50 gives ~0.2). The noise scale is log-uniform in t,
    # so a uniform grid is uniform in log sigma.
    "ve": ({"name": "ve", "sigma_max": 1000.0}, "uniform"),
    # PBM (Föllmer): the reference is pinned at 0, so the prior is exact up to
    # t_max = T (1 - 1e-6) (KL ~ 1e-6 E|mu|^2 / 2 sigma^2 < 1e-3). Modes are chosen close to
    # t = T, where the default "quadratic-prior" grid is dense; a uniform grid fails.
    "pbm": ({"name": "pbm", "sigma": 1.0}, "quadratic-prior"),
}

SAMPLERS = {
    "euler": lambda spacing: {"name": "reverse-sde", "steps": STEPS, "spacing": spacing},
    "heun": lambda spacing: {
        "name": "reverse-sde", "steps": STEPS, "spacing": spacing, "solver": "heun"
    },
    # pf-ode: see DIVERGENCE below
    "pf-ode": lambda spacing: {"name": "pf-ode"},
}
# In 2-d the exact divergence is cheap, and the PF-ODE's log-weights are checked too (log Z
# of a mixture target); in 10-d one Hutchinson probe keeps the run cheap (samples only).
DIVERGENCE = {"gmm40": "exact", "gmm10": "hutchinson"}


class Reference:
    """A target's exact samples, mode assignment, MMD bandwidth and MMD null at size `N`.

    Exact samples and responsibilities are computed here with NumPy in float64 from the
    mixture's definition (weights, means, covariances): independent of the code under
    test, and with nothing to compile.
    """

    def __init__(self, target):
        self.target = target
        self.weights = f64(target.weights)
        self.means = f64(target.means)
        self.chol = np.linalg.cholesky(f64(target.covs))
        self.K = self.weights.shape[0]
        self._z = self.exact(10_001)
        self.bandwidth = float(np.median(pdist(self._z)))  # median heuristic
        self.mmd_threshold, self.mmd_null_std = self._mmd_null()

    def _mmd_null(self) -> tuple[float, float]:
        """The `1 - P_MIN` quantile and the std of MMD^2_u between two exact samples of size N.

        Under the null, `MMD^2_u ~ (2/N) sum_l lam_l (Z_l^2 - 1)` with `lam_l` the
        eigenvalues of the centred kernel operator (Gretton et al. 2012, JMLR, thm. 12),
        the 40 largest estimated from the centred Gram matrix of 1000 exact points; the
        quantile is simulated from that (Gretton et al. 2009, "spectral" null). With few
        dominant eigenvalues the tail is chi-square-like: 5 std would be exceeded ~0.2% of
        the time, the 1e-3 quantile is ~6 std.
        """
        z = self._z[:1000]
        gram = gaussian_gram(z, z, self.bandwidth)
        centred = gram - gram.mean(0) - gram.mean(1)[:, None] + gram.mean()
        # the 40 largest (Lanczos; a dense eigendecomposition is slow here)
        lam = eigsh(centred / z.shape[0], k=40, which="LA", return_eigenvectors=False)
        lam = np.clip(lam, 0, None)
        a = 2 * lam / N
        Z = np.random.default_rng(0).standard_normal((100_000, a.size))
        null = (Z**2 - 1) @ a
        return float(np.quantile(null, 1 - P_MIN)), float(np.sqrt(2 * np.sum(a**2)))

    def exact(self, seed: int, n: int = N) -> np.ndarray:
        """`n` exact samples of the target."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(self.K, size=n, p=self.weights / self.weights.sum())
        eps = rng.standard_normal((n, self.means.shape[1]))
        return self.means[comp] + np.einsum("nij,nj->ni", self.chol[comp], eps)

    def assign(self, x) -> np.ndarray:
        """The most responsible component of each point."""
        x = f64(x)
        diff = x[None, :, :] - self.means[:, None, :]  # (K, n, d)
        z = np.linalg.solve(self.chol[:, None], diff[..., None])[..., 0]  # L_k^{-1}(x - mu_k)
        log_det = np.sum(np.log(np.diagonal(self.chol, axis1=1, axis2=2)), axis=1)
        log_r = np.log(self.weights)[:, None] - 0.5 * np.sum(z**2, -1) - log_det[:, None]
        return np.argmax(log_r, axis=0)

    def mode_counts(self, x):
        return np.bincount(self.assign(x), minlength=self.K)


_REFERENCES: dict[str, Reference] = {}


def reference(name: str) -> Reference:
    if name not in _REFERENCES:
        _REFERENCES[name] = Reference(TARGETS[name]())
    return _REFERENCES[name]


def test_mmd_null_matches_replicates():
    """The spectral null of MMD^2_u agrees with exact-vs-exact replicates (gmm10): in std,
    with the U-statistic variance estimate, and in mean (zero: the estimator is unbiased)."""
    ref = reference("gmm10")
    n, R = 400, 60  # the null scales as 1/n exactly, so small replicates suffice
    std = ref.mmd_null_std * N / n
    xs = ref.exact(77, 2 * R * n).reshape(R, 2, n, -1)
    values, stds = (f64(v) for v in zip(*(mmd2_and_null_std(*xy, ref.bandwidth) for xy in xs)))
    # from 60 replicates a std is estimated to ~9% (SE 1/sqrt(2(R-1))): 3 SE is 28%
    assert np.std(values, ddof=1) == pytest.approx(std, rel=0.28)
    assert np.mean(stds) == pytest.approx(std, rel=0.2)
    assert abs(np.mean(values)) < 4 * std / math.sqrt(R)
    assert 5 * ref.mmd_null_std < ref.mmd_threshold < 8 * ref.mmd_null_std


# ------------------------------------------------------------- configuration sanity


def gaussian_kl(m0, S0, m1, S1) -> float:
    """KL(N(m0, S0) || N(m1, S1)), float64."""
    d = m0.shape[0]
    S1_inv = np.linalg.inv(S1)
    diff = m1 - m0
    _, logdet0 = np.linalg.slogdet(S0)
    _, logdet1 = np.linalg.slogdet(S1)
    return 0.5 * (np.trace(S1_inv @ S0) + diff @ S1_inv @ diff - d + logdet1 - logdet0)


@pytest.mark.parametrize("target_name", list(TARGETS))
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_configurations_make_prior_and_t_min_errors_negligible(target_name, process_name):
    """KL(p_{t_max} || prior) and KL(p_{t_min} || pi) are < 1e-3 (TV < 0.023 each).

    Both by joint convexity of KL over the mixture components (same weights), with
    `p_t`'s components `N(a mu_k, a^2 Sigma_k + sigma^2 I)` from the process's marginal
    (which `test_processes.py` checks against closed forms and simulation).
    """
    target = TARGETS[target_name]()
    options = dict(PROCESSES[process_name][0])
    process = sdekit.create("process", options.pop("name"), **options)
    w, mu, S = f64(target.weights), f64(target.means), f64(target.covs)
    d = mu.shape[1]
    eye = np.eye(d)

    a, sig = (float(v) for v in process.marginal(process.t_max))
    r = float(process.reference_std(process.t_max))
    kl_prior = sum(
        w_k * gaussian_kl(a * m, a**2 * C + sig**2 * eye, np.zeros(d), r**2 * eye)
        for w_k, m, C in zip(w, mu, S)
    )
    a, sig = (float(v) for v in process.marginal(process.t_min))
    kl_data = sum(
        w_k * gaussian_kl(a * m, a**2 * C + sig**2 * eye, m, C) for w_k, m, C in zip(w, mu, S)
    )
    assert kl_prior < 1e-3, f"prior mismatch KL <= {kl_prior:.2e}"
    assert kl_data < 1e-3, f"p_t_min vs target KL <= {kl_data:.2e}"


# ------------------------------------------------------ samples against exact samples


# Every sampler under every process on both targets, except diffrax's Heun on the 10-d
# mixture: its code path is dimension-agnostic and already covered on gmm40, and each
# case costs a diffrax compilation (~6 s CPU) against the suite's time budget.
CASES = [
    pytest.param(t, p, s, marks=pytest.mark.slow, id=f"{t}-{p}-{s}")
    for t in TARGETS
    for p in PROCESSES
    for s in SAMPLERS
    if not (t == "gmm10" and s == "heun")
]


@pytest.mark.parametrize("target_name,process_name,sampler_name", CASES)
def test_exact_score_sampler_matches_exact_samples(target_name, process_name, sampler_name):
    ref = reference(target_name)
    process, spacing = PROCESSES[process_name]
    options = SAMPLERS[sampler_name](spacing)
    if sampler_name == "pf-ode":
        options["divergence"] = DIVERGENCE[target_name]
    sampler = sdekit.compose(ref.target, options, process=process, score="exact")
    # Every case has its own sampler seed and its own exact sample, so the tests are
    # independent, each with false-alarm probability P_MIN.
    seed = [c.values for c in CASES].index((target_name, process_name, sampler_name))
    samples = sampler.sample(jax.random.PRNGKey(1000 + seed), N)
    x = samples.x
    assert x.shape == (N, ref.target.dim) and bool(jnp.all(jnp.isfinite(x)))
    if options.get("divergence") == "exact":
        # log w = log gamma - log q with q the ODE's own density: an importance-sampling
        # estimate of log Z (= 0), within 5 SE plus the ODE's log-density error (1e-3)
        log_Z_hat, se = is_log_Z(samples.log_weights)
        assert abs(log_Z_hat - ref.target.log_Z) <= 5 * se + 1e-3, (log_Z_hat, se)
    exact = ref.exact(2000 + seed)

    table = np.stack([ref.mode_counts(x), ref.mode_counts(exact)])
    table = table[:, table.sum(axis=0) > 0]
    p_value = stats.chi2_contingency(table)[1]
    assert p_value > P_MIN, f"mode occupancy differs: p = {p_value:.2e}\n{table}"

    value = mmd2(x, exact, ref.bandwidth)
    assert value < ref.mmd_threshold, (
        f"MMD^2 {value:.3e} above the null's {1 - P_MIN} quantile {ref.mmd_threshold:.3e} "
        f"({value / ref.mmd_null_std:.1f} null std)"
    )


# --------------------------------------------------- PF-ODE likelihood and log Z


GAUSS_MEAN = np.array([1.0, -2.0, 0.5])
GAUSS_COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
LOG_Z = 1.5


def gaussian_pf_ode(**options):
    """PF-ODE on a 3-d Gaussian under VP with beta_max = 60: alpha_T = e^{-15}, so the
    prior N(0, I) is p_T up to a log-density error < 1e-5 and the model density is
    p_{t_min} (analytic) up to the ODE solver's error."""
    target = sdekit.create("target", "gaussian", mean=GAUSS_MEAN, cov=GAUSS_COV, log_Z=LOG_Z)
    process = {"name": "vp", "beta_max": 60.0}
    sampler = sdekit.compose(
        target, {"name": "pf-ode", "rtol": 1e-6, "atol": 1e-6, **options}, process=process
    )
    return target, sampler


def analytic_log_p(process, t, x):
    a, sig = (float(v) for v in process.marginal(t))
    cov = a**2 * GAUSS_COV + sig**2 * np.eye(3)
    return stats.multivariate_normal(a * GAUSS_MEAN, cov).logpdf(f64(x))


@pytest.mark.slow
def test_pf_ode_log_likelihood_is_analytic_density_of_p_t_min():
    target, sampler = gaussian_pf_ode()
    process = sampler.process
    # Points from the target (~p_t_min) and from its tails.
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(GAUSS_COV)
    x = np.concatenate(
        [
            GAUSS_MEAN + rng.standard_normal((48, 3)) @ chol.T,
            GAUSS_MEAN + 3.0 * rng.standard_normal((16, 3)),
        ]
    )
    # The prior's own mismatch with p_{t_max} is far below the tolerance at these points.
    a_T, sig_T = (float(v) for v in process.marginal(process.t_max))
    assert a_T < 1e-6 and abs(sig_T - 1) < 1e-6

    log_q = f64(sampler.log_likelihood(jnp.asarray(x, dtype=jnp.float32)))
    log_p = analytic_log_p(process, process.t_min, x)
    err = np.abs(log_q - log_p)
    assert err.max() < 1e-3, f"max |log q - log p_t_min| = {err.max():.2e}"


@pytest.mark.slow
def test_pf_ode_log_weights_give_analytic_log_Z():
    target, sampler = gaussian_pf_ode()
    log_w = f64(sampler.sample(jax.random.PRNGKey(3), N).log_weights)
    log_Z_hat, se = is_log_Z(log_w)
    # 5 standard errors, plus the 1e-3 of the ODE's log-density (previous test)
    assert abs(log_Z_hat - LOG_Z) <= 5 * se + 1e-3, (log_Z_hat, LOG_Z, se)
    # and every log-weight is log Z up to log pi - log p_t_min, tiny at t_min = 1e-3
    assert np.abs(log_w - LOG_Z).max() < 5e-3


@pytest.mark.slow
def test_reverse_sde_euler_log_weights_give_analytic_log_Z():
    """The discrete-time importance weights of Euler–Maruyama are exact for any step count."""
    target = sdekit.create("target", "gaussian", mean=GAUSS_MEAN, cov=GAUSS_COV, log_Z=LOG_Z)
    sampler = sdekit.compose(target, {"name": "reverse-sde", "steps": 100}, process="vp")
    log_Z_hat, se = is_log_Z(sampler.sample(jax.random.PRNGKey(4), 10 * N).log_weights)
    assert abs(log_Z_hat - LOG_Z) <= 5 * se, (log_Z_hat, LOG_Z, se)


def test_score_driven_samplers_work_alone_and_are_diffusion_samplers():
    from sdekit_samplers import PFODE, ReverseSDE

    # the exported classes and the registered names alike take only a target
    for sampler in (
        ReverseSDE(target="gmm40", steps=10),
        sdekit.create("sampler", "reverse-sde", target="gmm40", steps=10),
        PFODE(target="gmm40", solver="euler", steps=10),
        sdekit.create("sampler", "pf-ode", target="gmm40", solver="euler", steps=10),
    ):
        assert isinstance(sampler, sdekit.AbstractDiffusionSampler)
        assert type(sampler.process).__name__ == "VP"
        x = sampler.sample_from(jax.random.key(0), jnp.zeros((4, 2)))
        assert x.shape == (4, 2) and bool(jnp.all(jnp.isfinite(x)))
    # a part given as a dict is parsed by resolve_part
    assert ReverseSDE("gmm40", {"name": "vp", "sigma": 30.0}, steps=10).process.sigma == 30.0
