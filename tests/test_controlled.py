"""Trained samplers `pis`, `dds`, `dis`: exact discrete-time weights, training, checkpoints."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdekit
from sdekit import AbstractController, AbstractTarget


class FollmerGaussian(AbstractController):
    r"""The exact Föllmer drift of PIS (σ = 1, T = 1) for the target N(μ, s² I).

    In generative time t = 1 - τ, $u^*(t, x) = \nabla_x \log E[h(x + \sqrt{1-t} Z)]$ with
    $h = \gamma / N(0, I)$; for a Gaussian target this is $(b - a x) / (1 + a τ)$ with
    $a = 1/s^2 - 1$, $b = μ/s^2$.
    """

    mean: jax.Array
    scale: float

    def __call__(self, t, x):
        a = 1 / self.scale**2 - 1
        return (self.mean / self.scale**2 - a * x) / (1 + a * t)


def ess(log_w):
    w = jnp.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (w.shape[0] * (w**2).sum()))


def test_dds_is_exact_when_the_target_is_the_reference_law():
    # N(0, I) is the stationary law of the vp process, so the zero control (the initial
    # PIS-grad network) is optimal and every discrete-time weight equals log Z.
    target = sdekit.create("target", "gaussian", dim=3, mean=[0.0, 0.0, 0.0], log_Z=1.5)
    sampler = sdekit.compose(target, {"name": "dds", "steps": 20})
    samples = sampler.sample(jax.random.key(0), 2000)
    np.testing.assert_allclose(samples.log_weights, 1.5, atol=2e-4)
    assert ess(samples.log_weights) > 1 - 1e-6
    x = target.sample(jax.random.key(1), 2000)
    np.testing.assert_allclose(sampler.backward_log_weights(jax.random.key(2), x), 1.5, atol=2e-4)


@pytest.mark.parametrize("exploration", [0.0, 0.5])
def test_the_log_variance_loss_vanishes_at_the_optimal_control_on_and_off_policy(exploration):
    # zero control is optimal for dds on N(0, I): every weight is log Z on any trajectory,
    # including the wider exploring ones; off the optimum (a shifted target) it is not
    optimal = sdekit.create("target", "gaussian", dim=3, mean=[0.0, 0.0, 0.0], log_Z=1.5)
    shifted = sdekit.create("target", "gaussian", dim=3, mean=[1.0, 0.0, 0.0], log_Z=1.5)
    spec = {"name": "dds", "steps": 20, "loss": "log-variance", "exploration": exploration}
    key = jax.random.key(0)
    loss, stats = sdekit.compose(optimal, spec).loss(key)
    assert float(loss) < 1e-7
    np.testing.assert_allclose(stats["log_Z"], 1.5, atol=2e-4)
    assert float(sdekit.compose(shifted, spec).loss(key)[0]) > 0.1


def _pis_with_exact_control(steps: int):
    target = sdekit.create("target", "gaussian", dim=2, scale=0.7, log_Z=1.5)
    control = FollmerGaussian(target.mean, 0.7)
    return target, sdekit.compose(target, {"name": "pis", "steps": steps}, controller=control)


def test_pis_with_the_exact_follmer_drift_becomes_exact_as_steps_grow():
    n = 4000
    results = {}
    for steps in (8, 64, 512):
        target, sampler = _pis_with_exact_control(steps)
        log_w = sampler.sample(jax.random.key(0), n).log_weights
        results[steps] = (float(jnp.std(log_w)), ess(log_w), float(sdekit.log_Z_estimate(log_w)))
    spreads = [results[k][0] for k in (8, 64, 512)]
    assert spreads[0] > spreads[1] > spreads[2]
    std, ess512, log_Z = results[512]
    assert ess512 > 0.99
    # log Ẑ is unbiased for Z; its error is of order std(log w) / sqrt(n).
    assert abs(log_Z - 1.5) < 5 * std / np.sqrt(n) + 1e-4


class ScaledFollmer(AbstractController):
    r"""The output $m = \sigma^2 u^*$ for pbm with noise scale σ: $X = \sigma Y$ with $Y$ the
    σ = 1 process for the target rescaled by $1/\sigma$, so $u^*(t, x) = u_1(t, x/\sigma)/\sigma$."""

    inner: FollmerGaussian
    sigma: float

    def __call__(self, t, x):
        return self.sigma * self.inner(t, x / self.sigma)


def test_the_controller_predicts_the_correction_in_the_references_units():
    # pbm with sigma = 2: the exact control, given as m = sigma^2 u* (the default
    # control_scale is the process's sigma), makes the weights exact; read as u
    # (control_scale=1) it is four times too strong
    target = sdekit.create("target", "gaussian", dim=2, scale=0.7, log_Z=1.5)
    control = ScaledFollmer(FollmerGaussian(target.mean / 2, 0.35), 2.0)
    process = {"name": "pbm", "sigma": 2.0}
    spreads = []
    for steps in (128, 512, 2048):
        spec = {"name": "pis", "steps": steps}
        sampler = sdekit.compose(target, spec, process=process, controller=control)
        log_w = sampler.sample(jax.random.key(0), 4000).log_weights
        spreads.append(float(jnp.std(log_w)))
    assert sampler.control_scale == 2.0
    assert spreads[0] > spreads[1] > spreads[2]
    assert ess(log_w) > 0.99
    assert abs(float(sdekit.log_Z_estimate(log_w)) - 1.5) < 5 * spreads[2] / np.sqrt(4000) + 1e-4
    spec = {"name": "pis", "steps": 2048, "control_scale": 1.0}
    unscaled = sdekit.compose(target, spec, process=process, controller=control)
    assert ess(unscaled.sample(jax.random.key(0), 4000).log_weights) < 0.5


def test_training_simulates_on_train_steps_and_sampling_on_steps():
    # the loss of a sampler with train_steps=8 is the loss on the 8-step grid (same key,
    # same controller); sampling uses the 64-step grid, and the untrained (zero) control
    # is exact there for the reference law
    target = sdekit.create("target", "gaussian", dim=3, mean=[0.0, 0.0, 0.0], log_Z=1.5)
    shifted = sdekit.create("target", "gaussian", dim=3, mean=[1.0, 0.0, 0.0], log_Z=1.5)
    key = jax.random.key(0)
    coarse = sdekit.compose(shifted, {"name": "dds", "steps": 8})
    mixed = sdekit.compose(shifted, {"name": "dds", "steps": 64, "train_steps": 8})
    fine = sdekit.compose(shifted, {"name": "dds", "steps": 64})
    assert float(mixed.loss(key)[0]) == float(coarse.loss(key)[0]) != float(fine.loss(key)[0])
    exact = sdekit.compose(target, {"name": "dds", "steps": 64, "train_steps": 8})
    np.testing.assert_allclose(exact.sample(key, 1000).log_weights, 1.5, atol=2e-4)
    with pytest.raises(sdekit.CompositionError, match="train_steps must be None or an integer >= 1"):
        sdekit.compose(target, {"name": "dds", "train_steps": 0})


def _girsanov_log_weights(key, control, target, steps, n):
    """PIS's continuous-time Girsanov weight along Euler–Maruyama paths from X_0 = 0:
    log γ(X_T) - log N(X_T; 0, T) - Σ ½|u|² Δt - Σ u·ΔW (σ = 1, T = 1)."""
    dt = 1.0 / steps
    u = jax.vmap(control, in_axes=(None, 0))

    def step(carry, inputs):
        x, log_w = carry
        t, k = inputs
        dw = jnp.sqrt(dt) * jax.random.normal(k, x.shape)
        drift = u(1.0 - t, x)
        log_w -= 0.5 * jnp.sum(drift**2, -1) * dt + jnp.sum(drift * dw, -1)
        return (x + drift * dt + dw, log_w), None

    ts = jnp.arange(steps) * dt
    init = (jnp.zeros((n, target.dim)), jnp.zeros(n))
    (x, log_w), _ = jax.lax.scan(step, init, (ts, jax.random.split(key, steps)))
    return log_w + jax.vmap(target.log_prob)(x) - sdekit.gaussian_log_prob(x, 0.0, 1.0)


@pytest.mark.parametrize("steps", [16, 128])
def test_discrete_kernel_weights_agree_with_the_girsanov_form(steps):
    n = 20_000
    target, sampler = _pis_with_exact_control(steps)
    discrete = sampler.sample(jax.random.key(3), n).log_weights
    girsanov = _girsanov_log_weights(jax.random.key(4), sampler.controller, target, steps, n)
    se = np.sqrt((jnp.var(discrete) + jnp.var(girsanov)) / n)
    assert abs(float(jnp.mean(discrete) - jnp.mean(girsanov))) < 4 * se
    assert abs(float(jnp.std(discrete) - jnp.std(girsanov))) < 0.05 * float(jnp.std(girsanov)) + 1e-3


def _small_pis(target, process="pbm", **options):
    spec = {"name": "pis", "steps": 32, "batch": 128, "train_iters": 120, **options}
    return sdekit.compose(target, spec, process=process, controller={"name": "pis-grad", "width": 32})


def test_training_improves_the_elbo_steadily():
    target = sdekit.create("target", "gmm", means=[[-3.0, 0.0], [3.0, 1.0]])
    sampler, history = sdekit.train(_small_pis(target), jax.random.key(0), progress=False)
    windows = history["elbo"].reshape(4, -1)
    means = windows.mean(1)
    ses = windows.std(1) / np.sqrt(windows.shape[1])
    for k in range(3):
        assert means[k + 1] > means[k] - 3 * np.hypot(ses[k], ses[k + 1]), means
    assert means[-1] > means[0] + 0.5
    log_w = sampler.sample(jax.random.key(1), 4000).log_weights
    elbo = float(jnp.mean(log_w))
    eubo = float(jnp.mean(sampler.backward_log_weights(jax.random.key(2), target.sample(jax.random.key(3), 4000))))
    assert elbo < 0.0 < eubo  # log Z = 0 lies between the bounds


def test_interrupted_training_resumes_to_the_same_parameters(tmp_path, interrupted_training):
    target = sdekit.create("target", "gaussian", dim=2)
    model = _small_pis(target, train_iters=60)
    model = eqx.tree_at(lambda m: m.train_options, model, sdekit.TrainOptions(steps=60, chunk=20))
    reference, _ = sdekit.train(model, jax.random.key(5), progress=False)

    path = tmp_path / "checkpoint.eqx"
    interrupted_training(model, jax.random.key(5), path)
    resumed, history = sdekit.train(model, jax.random.key(5), checkpoint=path, progress=False)
    assert not np.isnan(history["loss"]).any()
    for a, b in zip(jax.tree.leaves(eqx.filter(reference, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(resumed, eqx.is_array))):
        np.testing.assert_array_equal(a, b)


class NaNOutside(AbstractTarget):
    """A standard normal whose log-density is NaN where a coordinate exceeds 3.5 in size
    (finite at `check_target`'s test points; reached at once by a PIS run with σ = 3)."""

    dim: int = 2

    def log_prob(self, x):
        return jnp.where(jnp.max(jnp.abs(x)) > 3.5, jnp.nan, -0.5 * jnp.sum(x**2))


def test_a_non_finite_loss_stops_training_with_the_step_and_keeps_the_last_good_state(tmp_path):
    path = tmp_path / "checkpoint.eqx"
    model = _small_pis(NaNOutside(), process={"name": "pbm", "sigma": 3.0})
    with pytest.raises(sdekit.TrainingDiverged, match="non-finite at step 0"):
        sdekit.train(model, jax.random.key(0), checkpoint=path, progress=False)
    state = sdekit._train._init_state(model, ("elbo", "log_Z"))
    saved = eqx.tree_deserialise_leaves(path, state)
    assert int(saved.step) == 0
    for a, b in zip(jax.tree.leaves(saved.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_bad_options_are_clear_errors():
    with pytest.raises(sdekit.CompositionError, match="stationary reference"):
        sdekit.compose("gaussian", "dds", process="ve")
    with pytest.raises(sdekit.CompositionError, match="loss must be one of"):
        sdekit.compose("gaussian", {"name": "pis", "loss": "elbo"})
    with pytest.raises(sdekit.CompositionError, match="exploration=0.5 needs loss='log-variance'"):
        sdekit.compose("gaussian", {"name": "pis", "exploration": 0.5})
    with pytest.raises(sdekit.CompositionError, match="exploration must be a number >= 0"):
        sdekit.compose("gaussian", {"name": "pis", "loss": "log-variance", "exploration": -1})
    with pytest.raises(sdekit.CompositionError, match="batch must be"):
        sdekit.compose("gaussian", {"name": "pis", "batch": 1})
    for bad in (0.0, -1.0, float("nan"), "2", [1.0, 2.0]):
        with pytest.raises(sdekit.CompositionError, match="control_scale must be a positive number"):
            sdekit.compose("gaussian", {"name": "dds", "control_scale": bad})


@pytest.mark.parametrize("name", ["pis-grad", "mlp"])
def test_networks_split_first_layer_is_the_concatenated_mlp(name):
    """The controllers apply their first layer as W_x x + (W_e emb + b) (the time part once
    per time under vmap); it must be the MLP of the concatenated input, trained or not."""
    from sdekit_controllers._networks import _state_time_mlp

    sampler = sdekit.compose("funnel", "pis", controller=name)
    net = sampler.controller.state_net if name == "pis-grad" else sampler.controller.net
    # random last layer: the zero-initialised one would hide errors in the first
    last = jax.random.normal(jax.random.key(1), net.layers[-1].weight.shape)
    net = eqx.tree_at(lambda m: m.layers[-1].weight, net, last)
    x = 3 * jax.random.normal(jax.random.key(2), (5, 10))
    emb = sampler.controller.time(0.3)
    split = jax.vmap(_state_time_mlp, in_axes=(None, 0, None))(net, x, emb)
    whole = jax.vmap(lambda xi: net(jnp.concatenate([xi, emb])))(x)
    assert float(jnp.max(jnp.abs(whole))) > 0.1
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["pis", "dds", "dis"])
def test_trained_samplers_work_alone_from_a_target_name(name):
    sampler = sdekit.create("sampler", name, target="funnel", steps=4, batch=8)
    assert isinstance(sampler, sdekit.AbstractPathSampler)
    samples = sampler.sample(jax.random.key(0), 8)
    assert samples.x.shape == (8, 10) and bool(jnp.all(jnp.isfinite(samples.log_weights)))
    # the declared default parts: pis on pbm, dds/dis on vp, the pis-grad controller
    assert type(sampler.process).__name__ == ("PBM" if name == "pis" else "VP")
    assert type(sampler.controller).__name__ == "PISGrad"


def test_the_exported_class_works_alone_and_takes_parts_as_specs():
    from sdekit_samplers import ControlledSDE

    sampler = ControlledSDE(target="funnel", steps=4, batch=8)
    assert sampler.integrator == "euler" and type(sampler.process).__name__ == "PBM"
    spec = ControlledSDE("gaussian", {"name": "vp", "sigma": 2.0}, {"name": "mlp", "width": 8}, steps=4)
    assert spec.process.sigma == 2.0 and type(spec.controller).__name__ == "TimeMLP"
    with pytest.raises(ValueError, match="integrator must be one of"):
        ControlledSDE("gaussian", integrator="rk4")


def test_the_default_control_scale_is_the_reference_std():
    # vp: its stationary sigma; pbm: sigma * sqrt(T - t_min) (sigma for T = 1, as the benchmarks use)
    assert sdekit.compose("gaussian", "dds", process={"name": "vp", "sigma": 3.0}).control_scale == 3.0
    pbm = sdekit.compose("gaussian", "pis", process={"name": "pbm", "sigma": 2.0, "T": 4.0})
    assert pbm.control_scale == pytest.approx(4.0)


@pytest.mark.parametrize("name", ["pis-grad", "mlp", "limited-width"])
def test_controllers_work_alone_from_a_target_name(name):
    from sdekit_controllers import LimitedWidth, PISGrad, TimeMLP

    controller = sdekit.create("controller", name, target="funnel")
    assert isinstance(controller, sdekit.AbstractController)
    assert controller(0.5, jnp.ones(10)).shape == (10,)
    # the exported class is the registered factory: same initialisation from the same seed
    cls = {"pis-grad": PISGrad, "mlp": TimeMLP, "limited-width": LimitedWidth}[name]
    alone = cls("funnel", seed=3)
    again = sdekit.create("controller", name, target="funnel", process="pbm", seed=3)
    for a, b in zip(jax.tree.leaves(eqx.filter(alone, eqx.is_array)), jax.tree.leaves(eqx.filter(again, eqx.is_array))):
        np.testing.assert_array_equal(a, b)
