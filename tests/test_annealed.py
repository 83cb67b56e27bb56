r"""The annealed samplers (`cmcd`, `scld`) against exact Gaussian answers.

Prior $\mathcal N(0, I)$ and target $\gamma = Z\,\mathcal N(m, \mathrm{diag}(s)^2)$: every
density of the geometric path is Gaussian, $\pi_\beta = \mathcal N(m_\beta, v_\beta)$, and the
control that moves $\pi_{k-1}$ onto $\pi_k$ in one step is known, so the weights must
become constant as $K$ grows; with any control, $\hat Z$ is unbiased.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array
from sdekit_annealed import AnnealedSampler, Buffer

import sdekit
from sdekit.metrics import ess

M, S, LOG_Z = jnp.array([1.0, -0.5]), jnp.array([0.5, 2.0]), 0.7


class Gaussian(sdekit.AbstractTarget):
    dim: int = eqx.field(static=True, default=2)

    def log_prob(self, x):
        return LOG_Z + sdekit.gaussian_log_prob(x, M, S)

    @property
    def log_Z(self):
        return LOG_Z


def _moments(beta):
    precision = 1 - beta + beta / S**2
    return beta * M / S**2 / precision, 1 / precision


class Transport(sdekit.AbstractController):
    """$u_j(x) = [T_j(x) - x] / \\varepsilon_{j+1}$, $T_j$ the affine map of $\\pi_j$ onto
    $\\pi_{j+1}$: the forward kernel of step $k$ uses $u_{k-1}$ at $x_{k-1}$."""

    K: int = eqx.field(static=True)
    steps: Array

    def __call__(self, t, x):
        j = jnp.minimum(jnp.round(t * self.K).astype(int), self.K - 1)
        (m1, v1), (m0, v0) = _moments((j + 1) / self.K), _moments(j / self.K)
        move = m1 - m0 + (jnp.sqrt(v1 / v0) - 1) * (x - m0)
        return move / self.steps[j]


def _with_transport(K: int) -> AnnealedSampler:
    """Constant step sizes: the backward kernel of step k uses u_k, the forward kernel of
    step k + 1's control, whose size matches only if the two steps are equally long."""
    sampler = AnnealedSampler(Gaussian(), steps=K, step_size=0.01)
    sampler = eqx.tree_at(lambda s: s.path.raw_step, sampler, jnp.full(K, sampler.path.raw_step[0]))
    return eqx.tree_at(lambda s: s.controller, sampler, Transport(K, sampler.path.step_sizes()))


def test_the_transport_control_makes_the_weights_constant_as_K_grows():
    n, results = 20_000, []
    for K in (16, 64, 256):
        log_w = _with_transport(K).sample(jax.random.key(K), n).log_weights
        results.append((float(ess(log_w)), float(sdekit.log_Z_estimate(log_w))))
    sizes = [e for e, _ in results]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] > 0.98, sizes
    for e, log_Z in results:
        # delta-method standard error of log Z-hat from the relative variance of the weights
        se = math.sqrt((1 / e - 1) / n)
        assert abs(log_Z - LOG_Z) < 5 * se + 1e-3, (log_Z, se)


def test_without_control_the_weights_are_poor_but_exact():
    """Zero control (unadjusted Langevin AIS): low ESS, yet log Z-hat unbiased."""
    n = 20_000
    log_w = AnnealedSampler(Gaussian(), steps=32, step_size=0.01).sample(jax.random.key(1), n).log_weights
    e = float(ess(log_w))
    assert e < 0.5
    assert abs(float(sdekit.log_Z_estimate(log_w)) - LOG_Z) < 5 * math.sqrt((1 / e - 1) / n)


def test_underdamped_weights_are_exact_both_ways():
    r"""Underdamped dynamics without control (friction and mass not 1): $\mathbb E w = Z$
    over paths from the prior and $\mathbb E[1/w] = 1/Z$ over paths run back from exact
    target samples, each within 5 standard errors."""
    sampler = AnnealedSampler(Gaussian(), steps=32, step_size=0.1, dynamics="underdamped",
                              friction=0.5, mass=1.5)
    n, key = 20_000, jax.random.key(12)
    w = np.exp(np.asarray(sampler.sample(key, n).log_weights, np.float64) - LOG_Z)
    x = M + S * jax.random.normal(key, (n, 2))
    inverse = np.exp(LOG_Z - np.asarray(sampler.backward_log_weights(key, x), np.float64))
    for ratio in (w, inverse):
        assert 0.01 < ratio.std() / ratio.mean()  # not trivially exact
        assert abs(np.log(ratio.mean())) < 5 * ratio.std() / ratio.mean() / math.sqrt(n)


@pytest.mark.parametrize("mcmc_steps, dynamics", [(0, "overdamped"), (2, "overdamped"), (2, "underdamped")])
def test_scld_estimate_of_Z_is_unbiased(mcmc_steps, dynamics):
    """The mean of Z-hat over independent runs of few particles, with resampling (and MALA
    moves) at every segment, is Z within its standard error (log Z-hat itself is biased
    low at small n)."""
    sampler = AnnealedSampler(Gaussian(), steps=16, segments=4, resample_threshold=1.0,
                              mcmc_steps=mcmc_steps, mcmc_step_size=0.1, dynamics=dynamics)
    estimate = jax.jit(jax.vmap(lambda k: sdekit.log_Z_estimate(sampler.run(k, 16)[1])))
    log_Z = estimate(jax.random.split(jax.random.key(2), 4000))
    ratio = np.exp(np.asarray(log_Z) - LOG_Z)
    se = ratio.std() / math.sqrt(ratio.size)
    assert abs(ratio.mean() - 1) < 4 * se, (ratio.mean(), se)
    assert np.mean(np.asarray(log_Z)) < LOG_Z  # Jensen: the log is biased low


@pytest.mark.parametrize("mcmc_steps", [0, 3])
def test_resampled_weighted_samples_estimate_the_targets_moments(mcmc_steps):
    # a prior wider than the target, so that the weights have finite variance
    sampler = AnnealedSampler(Gaussian(), steps=32, segments=8, resample_threshold=0.9,
                              prior_scale=3.0, step_size=0.01, mcmc_steps=mcmc_steps,
                              mcmc_step_size=0.05)
    (x, log_w, seg), n = eqx.filter_jit(sampler.run)(jax.random.key(3), 40_000), 40_000
    assert int(seg.resampled.sum()) >= 3  # resampling did happen
    if mcmc_steps:  # the moves moved, and the step size adapted towards 0.574
        assert 0.3 < float(seg.acceptance[-1]) < 0.9, seg.acceptance
    w = np.asarray(jax.nn.softmax(log_w))
    mean = w @ np.asarray(x)
    var = w @ (np.asarray(x) - mean) ** 2
    n_eff = float(ess(log_w)) * n
    np.testing.assert_array_less(np.abs(mean - M), 5 * np.asarray(S) / math.sqrt(n_eff))
    np.testing.assert_array_less(np.abs(var / S**2 - 1), 5 * math.sqrt(2 / n_eff))


@pytest.mark.parametrize("loss, segments, dynamics, buffer", [
    ("kl", 1, "overdamped", 0), ("log-variance", 1, "overdamped", 0),
    ("log-variance", 4, "overdamped", 4), ("kl", 1, "underdamped", 0),
])
def test_training_raises_the_elbo(loss, segments, dynamics, buffer):
    sampler = AnnealedSampler(Gaussian(), steps=16, segments=segments, loss=loss, batch=128,
                              train_iters=150, learning_rate=3e-3, dynamics=dynamics, buffer=buffer)
    trained, history = sdekit.train(sampler, jax.random.key(4), progress=False)
    key, n = jax.random.key(5), 4000
    before = float(jnp.mean(sampler.run(key, n)[2].log_G.sum(0)))
    after = float(jnp.mean(trained.run(key, n)[2].log_G.sum(0)))
    assert after > before + 0.1, (before, after)
    assert after < LOG_Z + 0.05  # an ELBO (for one segment, exactly a lower bound)
    assert np.all(np.isfinite(history["loss"]))


def test_only_the_declared_parameters_learn():
    sampler = AnnealedSampler(Gaussian(), steps=8, batch=16, train_iters=3,
                              learn_schedule=False, learn_prior=False)
    trained, _ = sdekit.train(sampler, jax.random.key(6), progress=False)
    np.testing.assert_array_equal(trained.path.schedule, sampler.path.schedule)
    np.testing.assert_array_equal(trained.path.mean, sampler.path.mean)
    assert not np.array_equal(trained.path.raw_step, sampler.path.raw_step)

    sampler = AnnealedSampler(Gaussian(), steps=8, batch=16, train_iters=3, dynamics="underdamped")
    trained, _ = sdekit.train(sampler, jax.random.key(6), progress=False)
    np.testing.assert_array_equal(trained.dynamics.log_mass, sampler.dynamics.log_mass)
    assert not np.array_equal(trained.dynamics.raw_friction, sampler.dynamics.raw_friction)


def test_the_schedule_is_monotone_from_0_to_1_for_any_parameters():
    sampler = AnnealedSampler(Gaussian(), steps=12)
    path = eqx.tree_at(lambda p: p.schedule, sampler.path, jax.random.normal(jax.random.key(7), (12,)) * 5)
    beta = np.asarray(path.betas())
    assert beta[0] == 0 and beta[-1] == pytest.approx(1) and np.all(np.diff(beta) > 0)


@pytest.mark.parametrize("option, value, message", [
    ("segments", 5, r"segments \(5\) must divide steps \(16\)"),
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("resample_threshold", 1.5, r"resample_threshold must be a number in \[0, 1\], got 1.5"),
    ("step_size", -0.1, "step_size must be a positive number, got -0.1"),
    ("score_clip", 0, "score_clip must be None"),
    ("mcmc_steps", -1, "mcmc_steps must be an integer >= 0, got -1"),
    ("mcmc_step_size", 0.0, "mcmc_step_size must be a positive number, got 0.0"),
    ("loss", "elbo", "loss must be one of"),
    ("dynamics", "overdamp", r"dynamics must be one of \('overdamped', 'underdamped'\), got 'overdamp'"),
    ("friction", -1.0, "friction must be a positive number, got -1.0"),
    ("buffer", 4, r"a buffer \(buffer=4\) trains by loss='log-variance', not 'kl'"),
])
def test_bad_options_are_named(option, value, message):
    options = {"steps": 16, option: value}
    with pytest.raises(sdekit.CompositionError, match=message):
        sdekit.create("sampler", "scld", target="gaussian", **{"loss": "kl", "buffer": 0, **options})


def test_factories_work_from_a_target_alone_and_on_the_funnel():
    sampler = sdekit.create("sampler", "cmcd", target="funnel", steps=8)
    out = sampler.sample(jax.random.key(8), 64)
    assert out.x.shape == (64, 10) and np.all(np.isfinite(np.asarray(out.log_weights)))


def test_the_buffer_keeps_the_newest_finite_paths_and_draws_by_priority():
    buffer = Buffer.empty(segments=1, capacity=4, length=2, dim=1)
    paths = jnp.arange(6.0).reshape(1, 6, 1, 1) * jnp.ones((1, 1, 2, 1))
    log_G = jnp.array([[0.0, 1.0, jnp.nan, 0.5, -1.0, 2.0]])
    buffer = buffer.insert(paths[:, :3], log_G[:, :3]).insert(paths[:, 3:], log_G[:, 3:])
    # slots 0, 1 overwritten by paths 4, 5 (first in, first out); path 2 was non-finite
    np.testing.assert_array_equal(buffer.paths[0, :, 0, 0], [4.0, 5.0, 2.0, 3.0])
    np.testing.assert_array_equal(buffer.log_G[0], [-1.0, 2.0, -np.inf, 0.5])
    draws = jax.vmap(lambda k: buffer.draw(k, 1)[0, 0])(jax.random.split(jax.random.key(9), 20_000))
    counts = np.bincount(np.asarray(draws), minlength=4) / 20_000
    expected = np.exp([-1.0, 2.0, -np.inf, 0.5]) / np.exp([-1.0, 2.0, 0.5]).sum()
    np.testing.assert_allclose(counts, expected, atol=5 * np.sqrt(0.25 / 20_000))
    pair = buffer.draw(jax.random.key(10), 3)[0]
    assert len(set(np.asarray(pair).tolist())) == 3 and 2 not in pair  # distinct, finite first


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_rescoring_stored_paths_gives_their_simulated_weights(dynamics):
    sampler = AnnealedSampler(Gaussian(), steps=8, segments=2, dynamics=dynamics)
    _, _, seg = sampler.run(jax.random.key(11), 32, keep_paths=True)
    np.testing.assert_allclose(sampler.rescore(seg.paths), seg.log_G, rtol=1e-4, atol=1e-4)


def test_training_with_a_buffer_resumes_to_the_same_state(tmp_path, interrupted_training):
    """The buffer is part of the checkpoint: an interrupted run, resumed, ends with the
    parameters and the buffer of an uninterrupted one."""
    sampler = AnnealedSampler(Gaussian(), steps=8, segments=2, loss="log-variance", buffer=2,
                              batch=16, train_iters=6)
    sampler = eqx.tree_at(lambda s: s.train_options, sampler, sdekit.TrainOptions(steps=6, chunk=2))
    checkpoints = tmp_path / "reference.eqx", tmp_path / "resumed.eqx"
    reference, _ = sdekit.train(sampler, jax.random.key(12), checkpoint=checkpoints[0], progress=False)
    interrupted_training(sampler, jax.random.key(12), checkpoints[1])
    resumed, _ = sdekit.train(sampler, jax.random.key(12), checkpoint=checkpoints[1], progress=False)
    for a, b in zip(jax.tree.leaves(eqx.filter(reference, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(resumed, eqx.is_array))):
        np.testing.assert_array_equal(a, b)
    assert checkpoints[0].read_bytes() == checkpoints[1].read_bytes()  # buffer included
    state = sdekit._train._load_state(checkpoints[1], sdekit._train._init_state(sampler, ("elbo", "log_Z")))
    assert np.isfinite(np.asarray(state.loss_state.log_G)).sum() == 2 * 2 * 16  # full: 3 inserts


def test_a_fitted_gaussian_standardises_the_target():
    """`fit="laplace"` on a Gaussian finds its mean and scale exactly, so the sampler runs on
    a standard normal: the untrained sampler's weights are nearly constant, log Z-hat is
    log Z and the samples come back in the target's coordinates. `"auto"` does not fit a
    target whose log Z is known, and fits one whose log Z is unknown."""
    sampler = AnnealedSampler(Gaussian(), steps=16, step_size=0.01, fit="laplace")
    np.testing.assert_allclose(sampler.path.target.scale, S, rtol=1e-3)
    out, n = sampler.sample(jax.random.key(13), 20_000), 20_000
    e = float(ess(out.log_weights))
    assert e > 0.99 and abs(float(sdekit.log_Z_estimate(out.log_weights)) - LOG_Z) < 5 * math.sqrt((1 / e - 1) / n) + 1e-3
    np.testing.assert_array_less(np.abs(np.asarray(out.x).mean(0) - M), 5 * np.asarray(S) / math.sqrt(n))
    assert sampler.target is sampler.path.target.target and sampler.fit_evaluations > 0
    assert AnnealedSampler(Gaussian(), steps=4).fit_evaluations == 0

    class Unknown(Gaussian):
        @property
        def log_Z(self):
            return None

    assert AnnealedSampler(Unknown(), steps=4).fit_evaluations > 0


def test_statistics_are_traceable_and_count_resamplings():
    """`sdekit.run` compiles `sample_with_stats`: its statistics are arrays under `jit`."""
    sampler = AnnealedSampler(Gaussian(), steps=8, segments=2, resample_threshold=1.0)
    _, stats = eqx.filter_jit(sampler.sample_with_stats)(jax.random.key(14), 64)
    assert int(stats["resamplings"]) == 1  # after the first segment, never after the last
    assert 0 < float(stats["min_ess"]) < 1
    assert float(stats["unique_fraction"]) == 1.0  # the last segment's moves separate copies
    assert stats["target_evaluations"] == 64 * (8 + 3 * 2)
