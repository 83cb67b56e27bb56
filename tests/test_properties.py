"""Property-based tests (hypothesis) of the core numerical pieces: log-weight estimators,
process transitions for random parameters, and metric symmetries.

Each property holds exactly in exact arithmetic; the tolerances are float32 rounding
bounds, stated where they are used. Shapes are fixed so that every example reuses one
compilation.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sdekit
from sdekit.metrics import elbo, ess, log_Z, mmd, sliced_w2, w2

EPS32 = float(jnp.finfo(jnp.float32).eps)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-50.0, 50.0, allow_nan=False, width=32)
log_weights = arrays(np.float32, st.integers(2, 64), elements=finite)
shifts = st.floats(-1e3, 1e3, allow_nan=False, width=32)


# --------------------------------------------------------------------------------------
# log-weight estimators


@SETTINGS
@given(log_weights, shifts)
def test_log_weight_estimators_under_a_constant_shift(lw, c):
    """Adding `c` to every log-weight (to log γ) adds `c` to log Ẑ and the ELBO and leaves
    the ESS unchanged, up to float32 rounding of `lw + c`."""
    lw = jnp.asarray(lw)
    shifted = lw + jnp.float32(c)
    tol = 8 * EPS32 * (abs(c) + float(jnp.max(jnp.abs(lw))) + 1)
    assert abs(float(log_Z(shifted) - log_Z(lw)) - c) <= tol
    assert abs(float(elbo(shifted) - elbo(lw)) - c) <= tol
    assert abs(float(ess(shifted) - ess(lw))) <= 1e-4


@SETTINGS
@given(log_weights)
def test_log_weight_estimator_bounds(lw):
    """ELBO <= log Ẑ <= max log w (Jensen; the mean is at most the max), 1/N <= ESS <= 1."""
    lw = jnp.asarray(lw)
    n = lw.shape[0]
    slack = 8 * EPS32 * (float(jnp.max(jnp.abs(lw))) + np.log(n))
    assert float(elbo(lw)) <= float(log_Z(lw)) + slack
    assert float(log_Z(lw)) <= float(jnp.max(lw)) + slack
    assert 1 / n - 1e-5 <= float(ess(lw)) <= 1 + 1e-5


@SETTINGS
@given(log_weights, st.randoms(use_true_random=False))
def test_log_weight_estimators_ignore_order(lw, rnd):
    perm = list(range(lw.shape[0]))
    rnd.shuffle(perm)
    for f in (log_Z, elbo, ess):
        assert float(f(lw[perm])) == pytest.approx(float(f(lw)), rel=1e-5, abs=1e-4)


class Shifted(sdekit.AbstractTarget):
    """`target` with `c` added to its log-density (so log Z shifts by `c`)."""

    target: sdekit.AbstractTarget
    c: jax.Array
    dim: int = eqx.field(static=True)

    def log_prob(self, x):
        return self.target.log_prob(x) + self.c


@pytest.fixture(scope="module")
def reverse_sde_for_gaussian():
    base = sdekit.create("target", "gaussian", dim=3)
    process = sdekit.create("process", "vp")
    score = sdekit.create("score", "exact", target=base, process=process)

    @eqx.filter_jit
    def log_weights(c):
        sampler = sdekit.create("sampler", "reverse-sde", target=Shifted(base, c, 3),
                                process=process, score=score, steps=20)
        return sampler.sample(jax.random.key(0), 256).log_weights

    return log_weights


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shifts)
def test_a_constant_in_log_gamma_shifts_a_samplers_log_Z_by_exactly_that(
    reverse_sde_for_gaussian, c
):
    """The same trajectories (same key) with log γ + c: every log-weight moves by `c`."""
    base = reverse_sde_for_gaussian(jnp.float32(0.0))
    shifted = reverse_sde_for_gaussian(jnp.float32(c))
    tol = 4 * EPS32 * (abs(c) + float(jnp.max(jnp.abs(base))))
    np.testing.assert_allclose(shifted - base, c, rtol=0, atol=tol)
    assert abs(float(log_Z(shifted) - log_Z(base)) - c) <= 2 * tol


# --------------------------------------------------------------------------------------
# process transitions


def _vp(schedule):
    return st.builds(
        lambda lo, width, sigma, T: sdekit.create(
            "process", "vp", schedule=schedule, beta_min=lo, beta_max=lo + width, sigma=sigma, T=T
        ),
        st.floats(0.01, 5.0), st.floats(0.1, 30.0), st.floats(0.1, 10.0), st.floats(0.5, 5.0),
    )


PROCESSES = st.one_of(
    _vp("linear"),
    _vp("cosine"),
    st.builds(
        lambda lo, width, sigma: sdekit.create(
            "process", "subvp", beta_min=lo, beta_max=lo + width, sigma=sigma
        ),
        st.floats(0.01, 5.0), st.floats(0.1, 30.0), st.floats(0.1, 10.0),
    ),
    st.builds(
        lambda lo, ratio: sdekit.create("process", "ve", sigma_min=lo, sigma_max=lo * ratio),
        st.floats(0.005, 1.0), st.floats(2.0, 5000.0),
    ),
    st.builds(
        lambda sigma, T: sdekit.create("process", "pbm", sigma=sigma, T=T),
        st.floats(0.1, 30.0), st.floats(0.5, 5.0),
    ),
)
#: three times in (0, 1), sorted, as fractions of [t_min, t_max]
FRACTIONS = st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).map(sorted)


@eqx.filter_jit
def _transitions(process, fractions):
    # sorted after the arithmetic: rounding may differ between the elements
    s, t, u = jnp.sort(process.t_min + fractions * (process.t_max - process.t_min))
    a_st, sd_st = process.transition(s, t)
    a_tu, sd_tu = process.transition(t, u)
    a_su, sd_su = process.transition(s, u)
    refs = jax.vmap(process.reference_std)(jnp.stack([s, u]))
    return a_st, sd_st, a_tu, sd_tu, a_su, sd_su, refs


@SETTINGS
@given(PROCESSES, FRACTIONS)
def test_transitions_compose_chapman_kolmogorov(process, fractions):
    r"""$Y_u \mid Y_s$ through $Y_t$: $a_{su} = a_{tu} a_{st}$ and
    $\sigma_{su}^2 = a_{tu}^2 \sigma_{st}^2 + \sigma_{tu}^2$, for random parameters and times;
    and the reference law propagates: $r_u^2 = a_{su}^2 r_s^2 + \sigma_{su}^2$."""
    a_st, sd_st, a_tu, sd_tu, a_su, sd_su, (r_s, r_u) = map(
        lambda v: np.asarray(v, np.float64), _transitions(process, jnp.asarray(fractions))
    )
    assert np.all(np.isfinite([a_st, sd_st, a_tu, sd_tu, a_su, sd_su, r_s, r_u]))
    assert 0 <= a_su <= 1 + 1e-6 and sd_su >= 0
    np.testing.assert_allclose(a_su, a_tu * a_st, rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(sd_su**2, a_tu**2 * sd_st**2 + sd_tu**2, rtol=1e-3,
                               atol=1e-5 * r_u**2)
    np.testing.assert_allclose(r_u**2, a_su**2 * r_s**2 + sd_su**2, rtol=1e-3,
                               atol=1e-5 * r_u**2)


# --------------------------------------------------------------------------------------
# metrics

N = 48
clouds = arrays(np.float32, (N, 2), elements=st.floats(-20.0, 20.0, width=32))
vectors = arrays(np.float32, (2,), elements=st.floats(-10.0, 10.0, width=32))


@SETTINGS
@given(clouds, clouds, vectors)
def test_w2_is_a_metric_on_these_clouds(x, y, m):
    """Symmetric, zero at equality, and a translation moves every point by `m`: W2 = |m|."""
    assert w2(x, x) == 0.0
    assert w2(x, y) == pytest.approx(w2(y, x), rel=1e-9, abs=1e-9)
    assert w2(x, x + m) == pytest.approx(float(np.linalg.norm(m.astype(np.float64))), rel=1e-5, abs=1e-5)


@SETTINGS
@given(clouds, clouds)
def test_sliced_w2_symmetric_and_zero_at_equality(x, y):
    key = jax.random.key(0)
    assert float(sliced_w2(x, x, key)) == 0.0
    assert float(sliced_w2(x, y, key)) == pytest.approx(float(sliced_w2(y, x, key)), rel=1e-5, abs=1e-5)


@SETTINGS
@given(clouds, clouds, vectors, st.floats(0.0, 2 * np.pi))
def test_mmd_symmetric_and_invariant_under_rigid_motions(x, y, m, angle):
    """With a fixed bandwidth the Gaussian kernel sees only distances."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    base = float(mmd(x, y, 3.0))
    assert float(mmd(y, x, 3.0)) == pytest.approx(base, abs=1e-5)
    moved = float(mmd(x @ rot.T + m, y @ rot.T + m, 3.0))
    assert moved == pytest.approx(base, abs=1e-4)
