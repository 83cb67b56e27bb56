"""The forward processes (`sdekit_processes`) and `time_grid` against exact ground truth.

Ground truth is never the code's own output:

- the Gaussian transitions `transition(s, t)` / `marginal(t)` are checked against closed
  forms written out independently here, by the conformance kit (`sdekit.testing`:
  Chapman–Kolmogorov, the reference marginal, drift and diffusion against the transition),
  and against a Monte-Carlo simulation of the forward SDE (`drift`, `diffusion`) by a fine
  Euler–Maruyama scheme from a fixed `x0`. Tolerances are 5 standard errors of the
  Monte-Carlo estimate (from the path count); the Euler–Maruyama discretisation bias is
  computed exactly (the scheme is linear-Gaussian here, so its mean and variance follow a
  deterministic recursion) and asserted to be below half a standard error, so it cannot
  eat the tolerance;
- the prior is checked against SciPy's normal log-density and by its sample moments;
- Euler–Maruyama's strong order 1/2 is measured on geometric Brownian motion, whose exact
  solution is known pathwise.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sdekit
import sdekit.testing
from sdekit_processes import PBM, VE, VP, SubVP

N_PATHS = 20_000
EM_STEPS = 1_000  # discretisation bias <= 0.5 SE, asserted exactly below
X0 = 1.5  # fixed start of every simulated path (d = 1)


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# Every built-in process, with (s, t) windows that exercise the interesting parts of its
# schedule: both ends of the linear beta, the cosine cap (beta = beta_max for t > ~0.90),
# the bridge close to its pinned end.
PROCESSES = {
    "vp-linear": (lambda: VP(sigma=2.0), [(0.0, 0.3), (0.2, 1.0)]),
    "vp-cosine": (lambda: VP(schedule="cosine"), [(0.0, 0.5), (0.6, 1.0)]),
    "subvp": (lambda: SubVP(), [(0.0, 0.4), (0.3, 0.9)]),
    "ve": (lambda: VE(), [(0.0, 0.5), (0.3, 0.8)]),
    "pbm": (lambda: PBM(sigma=1.5), [(0.0, 0.5), (0.3, 0.9)]),
}
CASES = [(name, s, t) for name, (_, windows) in PROCESSES.items() for s, t in windows]


def make(name):
    return PROCESSES[name][0]()


# ----------------------------------------------------------------- closed forms (ours)


def closed_form_marginal(name: str, t: float) -> tuple[float, float]:
    """`(a_t, sigma_t)` of `Y_t | Y_0` for the configurations above, derived by hand."""
    if name == "vp-linear":  # beta = 0.1 + 19.9 t, sigma = 2
        B = 0.1 * t + 0.5 * 19.9 * t**2
        return math.exp(-B / 2), 2.0 * math.sqrt(1 - math.exp(-B))
    if name == "vp-cosine":  # alpha_t = cos(phase(t)) / cos(phase(0)) before the cap
        phase = lambda u: (u + 0.008) / 1.008 * math.pi / 2  # noqa: E731
        a = math.cos(phase(t)) / math.cos(phase(0.0))
        assert t < 0.9, "closed form written for the uncapped part only"
        return a, math.sqrt(1 - a**2)
    if name == "subvp":
        B = 0.1 * t + 0.5 * 19.9 * t**2
        return math.exp(-B / 2), 1 - math.exp(-B)
    if name == "ve":  # sigma(t) = 0.01 * 5000^t
        sig = 0.01 * 5000.0**t
        return 1.0, math.sqrt(sig**2 - 0.01**2)
    if name == "pbm":  # Brownian bridge to 0 at T = 1, sigma = 1.5
        return 1 - t, 1.5 * math.sqrt(t * (1 - t))
    raise KeyError(name)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_marginal_matches_closed_form(name):
    process = make(name)
    for t in (0.05, 0.25, 0.5, 0.8):
        a, sig = process.marginal(t)
        a_ref, sig_ref = closed_form_marginal(name, t)
        np.testing.assert_allclose(f64(a), a_ref, rtol=1e-5, err_msg=f"{name} a_t at t={t}")
        np.testing.assert_allclose(f64(sig), sig_ref, rtol=1e-5, err_msg=f"{name} sigma_t at t={t}")


@pytest.mark.parametrize("name", list(PROCESSES))
def test_conformance(name):
    """Chapman–Kolmogorov, the reference marginal, drift and diffusion against the
    transition (exactly, and on short intervals at both ends), the prior: see
    `sdekit.testing.check_process`."""
    sdekit.testing.check_process(make(name))


# ------------------------------------------------------- Monte Carlo of the forward SDE


@jax.jit
def sde_coefficients(process, ts):
    """`c(t_k)` and `g(t_k)` on a grid: every built-in drift is linear, `f(t, y) = c(t) y`."""
    c = jax.vmap(lambda u: process.drift(u, jnp.ones(1))[0])(ts)
    return c, jax.vmap(process.diffusion)(ts)


def check_linear_drift(process):
    """The assumption behind `sde_coefficients`, checked at random points."""
    y = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    for t in (0.0, 0.37, 0.9):
        c, _ = sde_coefficients(process, jnp.array([t]))
        np.testing.assert_allclose(
            f64(jax.vmap(lambda v: process.drift(t, v))(y)), f64(c[0] * y), rtol=1e-5, atol=1e-6
        )


@partial(jax.jit, static_argnums=(4,))
def euler_maruyama_paths(key, c, g, h, n):
    """`n` Euler–Maruyama paths of `dY = c(t) Y dt + g(t) dW` from `Y = 1`: final values."""

    def step(y, inputs):
        c_k, g_k, h_k, k = inputs
        return y + h_k * c_k * y + g_k * jnp.sqrt(h_k) * jax.random.normal(k, y.shape), None

    y, _ = jax.lax.scan(step, jnp.full((n,), X0), (c, g, h, jax.random.split(key, c.shape[0])))
    return y


def em_law(process, s, t, steps):
    """Mean coefficient and variance of the Euler–Maruyama chain, exactly (float64).

    One step maps the mean by `1 + h c` and the variance to `(1 + h c)^2 v + g^2 h`.
    """
    ts = jnp.linspace(s, t, steps + 1)
    c, g = (f64(v) for v in sde_coefficients(process, ts[:-1]))
    h = np.diff(f64(ts))
    m, v = 1.0, 0.0
    for c_k, g_k, h_k in zip(c, g, h):
        m, v = (1 + h_k * c_k) * m, (1 + h_k * c_k) ** 2 * v + g_k**2 * h_k
    return np.array([m, v])


@pytest.mark.parametrize("name,s,t", CASES)
def test_transition_matches_forward_sde_simulation(name, s, t):
    process = make(name)
    check_linear_drift(process)
    n, steps = N_PATHS, EM_STEPS
    a, sig = (float(v) for v in process.transition(s, t))
    mean_true, var_true = a * X0, sig**2
    se_mean, se_var = sig / math.sqrt(n), var_true * math.sqrt(2 / (n - 1))

    # The Euler–Maruyama bias, exactly: small next to the statistical tolerance.
    m_em, v_em = em_law(process, s, t, steps)
    assert abs(m_em * X0 - mean_true) <= 0.5 * se_mean, (m_em * X0, mean_true, se_mean)
    assert abs(v_em - var_true) <= 0.5 * se_var, (v_em, var_true, se_var)

    ts = jnp.linspace(s, t, steps + 1)
    c, g = sde_coefficients(process, ts[:-1])
    key = jax.random.PRNGKey(CASES.index((name, s, t)))
    y = f64(euler_maruyama_paths(key, c, g, jnp.diff(ts), n))
    mean, var = y.mean(), y.var(ddof=1)
    where = f"{name} ({s}->{t})"
    assert abs(mean - mean_true) <= 5 * se_mean, (
        f"{where}: simulated mean {mean} vs transition mean {mean_true}, 5 SE = {5 * se_mean}"
    )
    assert abs(var - var_true) <= 5 * se_var, (
        f"{where}: simulated variance {var} vs transition variance {var_true}, 5 SE = {5 * se_var}"
    )
    if s == 0.0:
        np.testing.assert_allclose(f64(process.marginal(t)), [a, sig], rtol=1e-6)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_coefficients_finite_on_the_whole_window(name):
    """`f`, `g` and the transitions are finite and `g > 0` on `(0, t_max]`, ends included
    (the cosine schedule's beta is capped near `T`, where the tangent of a float32 phase
    could turn negative). Only sub-VP has `g(0) = 0`."""
    process = make(name)
    # EM_STEPS points in all, so sde_coefficients reuses its compilation
    ts = jnp.linspace(0.0, process.t_max, EM_STEPS - 1)
    ts = jnp.concatenate([ts, jnp.array([process.t_min])])
    c, g = (f64(v) for v in sde_coefficients(process, ts))
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(g)), (c, g)
    assert np.all(g[1:] > 0) and g[0] >= 0, g
    a, sig = (f64(v) for v in jax.vmap(process.marginal)(ts))
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(sig))


def test_cosine_schedule_cap():
    process = VP(schedule="cosine", beta_max=20.0)
    assert float(process.schedule.beta(1.0)) == pytest.approx(20.0)
    # beta_max below beta(0): beta is beta_max throughout and B(t) = beta_max * t
    low = VP(schedule="cosine", beta_max=0.01)
    for t in (0.0, 0.3, 1.0):
        assert float(low.schedule.beta(t)) == pytest.approx(0.01)
        assert float(low.schedule.integral(t)) == pytest.approx(0.01 * t, abs=1e-7)


# ------------------------------------------------------------------------------ prior


@pytest.mark.parametrize("name", list(PROCESSES))
def test_prior_sample_and_log_prob(name):
    process = make(name)
    r = float(process.reference_std(process.t_max))
    d, n = 3, 20_000
    x = process.prior_sample(jax.random.PRNGKey(7), (n, d))
    assert x.shape == (n, d)
    x = f64(x)
    se_mean, se_var = r / math.sqrt(n), r**2 * math.sqrt(2 / (d * (n - 1)))
    assert np.all(np.abs(x.mean(axis=0)) <= 5 * se_mean)
    assert abs(x.var(axis=0, ddof=1).mean() - r**2) <= 5 * se_var

    pts = x[:100]
    ref = stats.norm.logpdf(pts, loc=0.0, scale=r).sum(axis=-1)
    got = f64(jax.vmap(process.prior_log_prob)(jnp.asarray(pts, dtype=jnp.float32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


# -------------------------------------------------------------------------- time grid


@pytest.mark.parametrize("name", ["vp-linear", "ve", "pbm"])
@pytest.mark.parametrize("spacing", [None, "uniform", "quadratic", "quadratic-prior"])
@pytest.mark.parametrize("steps", [1, 7, 500])
def test_time_grid(name, spacing, steps):
    process = make(name)
    ts = f64(sdekit.time_grid(process, steps, spacing))
    assert ts.shape == (steps + 1,)
    assert np.all(np.diff(ts) < 0), "the generative grid runs strictly from t_max down to t_min"
    assert ts[0] == np.float32(process.t_max) and ts[-1] == np.float32(process.t_min)
    if steps < 7:
        return
    h = -np.diff(ts)
    kind = process.default_spacing if spacing is None else spacing
    if kind == "uniform":
        np.testing.assert_allclose(h, h.mean(), rtol=1e-3)
    elif kind == "quadratic":  # denser near t_min (the data end)
        assert np.all(np.diff(h) < 0)
    elif kind == "quadratic-prior":  # denser near t_max (where generation starts)
        assert np.all(np.diff(h) > 0)


def test_time_grid_defaults_and_errors():
    assert VP().default_spacing == "uniform" and PBM().default_spacing == "quadratic-prior"
    np.testing.assert_array_equal(
        sdekit.time_grid(PBM(), 10), sdekit.time_grid(PBM(), 10, "quadratic-prior")
    )
    with pytest.raises(ValueError, match="spacing must be one of"):
        sdekit.time_grid(VP(), 10, "cubic")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer"):
            sdekit.time_grid(VP(), bad)
    # a NumPy integer is an integer
    assert sdekit.time_grid(VP(), np.int64(4)).shape == (5,)


# ------------------------------------------------------------------ option validation


@pytest.mark.parametrize(
    "factory,options,match",
    [
        (VP, {"sigma": -1.0}, "sigma must be positive"),
        (VP, {"sigma": 0.0}, "sigma must be positive"),
        (VP, {"sigma": float("nan")}, "sigma"),
        (VP, {"sigma": float("inf")}, "sigma"),
        (VP, {"sigma": "big"}, "sigma"),
        (VP, {"beta_min": -0.1}, "beta_min must be positive"),
        (VP, {"beta_max": 0.0}, "beta_max must be positive"),
        (VP, {"schedule": "quadratic"}, "schedule must be 'linear' or 'cosine'"),
        (VP, {"T": -1.0}, "T must be positive"),
        (VP, {"t_min": 0.5, "t_max": 0.2}, "t_min < t_max"),
        (VP, {"t_max": 2.0}, "t_max <= T"),
        (VP, {"t_min": -0.1}, "0 <= t_min"),
        (SubVP, {"sigma": -2.0}, "sigma must be positive"),
        (VE, {"sigma_min": -0.01}, "sigma_min must be positive"),
        (VE, {"sigma_max": 0.005}, "sigma_max must exceed sigma_min"),
        (PBM, {"sigma": -1.0}, "sigma must be positive"),
        (PBM, {"t_max": 1.0}, "t_max < T"),
    ],
)
def test_invalid_options_are_value_errors(factory, options, match):
    with pytest.raises(ValueError, match=match):
        factory(**options)


def test_invalid_options_through_create():
    with pytest.raises(sdekit.CompositionError, match="sigma must be positive, got -1"):
        sdekit.create("process", "vp", sigma=-1.0)
    with pytest.raises(sdekit.CompositionError, match="sigma_max must exceed"):
        sdekit.create("process", "ve", sigma_max=0.001)


# --------------------------------------------------- Euler–Maruyama strong order 1/2


def test_euler_maruyama_strong_order_half_on_gbm():
    r"""$dX = \mu X dt + \sigma X dW$, $X_T = X_0 e^{(\mu - \sigma^2/2)T + \sigma W_T}$ exactly.

    The Euler–Maruyama paths at `dt = 2^-4 .. 2^-9` use Brownian increments summed from
    one fine path (`2^-10`), so every resolution sees the same `W`. For multiplicative
    noise the strong error `E|X_T^EM - X_T|` decays like `dt^(1/2)`.
    """
    mu, sigma, x0, T = 2.0, 1.0, 1.0, 1.0
    n_paths, fine, levels = 4_000, 2**10, range(4, 10)

    @jax.jit
    def strong_errors(key):
        dW = jnp.sqrt(T / fine) * jax.random.normal(key, (fine, n_paths))
        x_exact = x0 * jnp.exp((mu - 0.5 * sigma**2) * T + sigma * dW.sum(axis=0))
        errors = []
        for p in levels:
            m = 2**p
            dW_coarse = dW.reshape(m, fine // m, n_paths).sum(axis=1)

            def step(x, dw, dt=T / m):
                return x + mu * x * dt + sigma * x * dw, None

            x_em, _ = jax.lax.scan(step, jnp.full((n_paths,), x0), dW_coarse)
            errors.append(jnp.mean(jnp.abs(x_em - x_exact)))
        return jnp.stack(errors)

    dts = [T / 2**p for p in levels]
    errors = f64(strong_errors(jax.random.PRNGKey(2024)))
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert 0.4 <= slope <= 0.65, f"strong order {slope:.3f} (errors {errors})"
