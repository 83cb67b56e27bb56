"""Composition-time validation: `create`, `compose` and `check_target` reject bad input
with an error that names the bad value, says what was expected and how to fix it."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import sdekit
from sdekit import _plugins


@pytest.fixture(autouse=True)
def fresh_plugins():
    _plugins.reset()
    yield
    _plugins.reset()


def error_of(excinfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------------------
# targets that misbehave


class Target(sdekit.AbstractTarget):
    """A target whose log-density is the function `f` (a static field)."""

    dim: int = eqx.field(static=True)
    f: object = eqx.field(static=True)

    def log_prob(self, x):
        return self.f(x)


def standard_normal(x):
    return -0.5 * x @ x


def test_good_target_passes():
    sdekit.check_target(Target(3, standard_normal))
    sdekit.check_target(sdekit.create("target", "gaussian"))


def test_wrong_shape():
    with pytest.raises(sdekit.TargetError) as e:
        sdekit.check_target(Target(2, lambda x: -0.5 * x**2))  # forgot the sum
    msg = error_of(e)
    assert "Target.log_prob returned shape (2,)" in msg
    assert "expected a scalar, shape ()" in msg and "jnp.sum" in msg


def test_wrong_shape_through_compose():
    with pytest.raises(sdekit.TargetError, match=r"returned shape \(1, 2\)"):
        sdekit.compose(Target(2, lambda x: jnp.zeros((1, 2))))


def test_nan_at_the_initial_points():
    scale = -1.0  # log of a negative scale: NaN everywhere
    with pytest.raises(sdekit.TargetError) as e:
        sdekit.check_target(Target(2, lambda x: standard_normal(x) - jnp.log(scale)))
    msg = error_of(e)
    assert "Target.log_prob is nan at test point 0, x = [0., 0.]" in msg
    assert "expected a finite log-density" in msg and "jnp.where" in msg


def test_nan_away_from_the_origin_names_that_point():
    # Finite at the origin, NaN where x0 < 0: the message gives the offending point.
    with pytest.raises(sdekit.TargetError) as e:
        sdekit.check_target(Target(2, lambda x: standard_normal(x) + jnp.sqrt(x[0])))
    msg = error_of(e)
    assert "is nan at test point" in msg and "test point 0," not in msg
    point = msg.split("x = [")[1].split("]")[0]
    assert float(point.split(",")[0]) < 0  # the reported x has x0 < 0


def test_plus_inf():
    with pytest.raises(sdekit.TargetError, match="is inf at test point 0"):
        sdekit.check_target(Target(2, lambda x: 1.0 / (x @ x)))


def test_minus_inf_everywhere():
    with pytest.raises(sdekit.TargetError, match="is -inf at all 8 test points"):
        sdekit.check_target(Target(2, lambda x: -jnp.inf * (1 + x @ x)))


def test_minus_inf_outside_the_support_is_allowed():
    half_plane = lambda x: jnp.where(x[0] > 0, standard_normal(x), -jnp.inf)  # noqa: E731
    sdekit.check_target(Target(2, half_plane))


def test_nan_gradient():
    with pytest.raises(sdekit.TargetError) as e:
        sdekit.check_target(Target(2, lambda x: -jnp.sqrt(x @ x)))  # cone: no gradient at 0
    msg = error_of(e)
    assert "the gradient of Target.log_prob is [nan, nan] at test point 0" in msg
    assert "where log_prob = 0 " in msg and "expected a finite gradient" in msg


def test_log_prob_that_cannot_be_traced():
    with pytest.raises(sdekit.TargetError) as e:
        sdekit.check_target(Target(2, lambda x: -float(x @ x)))
    msg = error_of(e)
    assert "Target.log_prob fails on one point of shape (2,)" in msg and "jax.numpy" in msg


def test_integer_log_prob():
    with pytest.raises(sdekit.TargetError, match="returned dtype int32.*floating-point"):
        sdekit.check_target(Target(2, lambda x: jnp.sum(x > 0)))


def test_log_prob_with_its_own_runtime_check():
    def positive_first_coordinate(x):
        x = eqx.error_if(x, x[0] == 0, "x[0] must be non-zero")
        return standard_normal(x)

    with pytest.raises(sdekit.TargetError, match="raised an error at the test points.*x.0. must be non-zero"):
        sdekit.check_target(Target(2, positive_first_coordinate))


def test_target_with_an_unhashable_static_field_is_still_checked():
    class Unhashable(sdekit.AbstractTarget):
        dim: int = eqx.field(static=True)
        table: dict = eqx.field(static=True)

        def log_prob(self, x):
            return -self.table["a"] * x @ x

    sdekit.check_target(Unhashable(2, {"a": 0.5}))
    with pytest.raises(sdekit.TargetError, match="is nan at test point 0"):
        sdekit.check_target(Unhashable(2, {"a": jnp.nan}))


@pytest.mark.parametrize("dim", [0, -1, 2.0, "2", True])
def test_bad_dim(dim):
    with pytest.raises(sdekit.TargetError, match=rf"Target.dim is {dim!r}; expected a positive"):
        sdekit.check_target(Target(dim, standard_normal))


def test_not_a_target():
    with pytest.raises(sdekit.TargetError, match="expected an AbstractTarget.*got function"):
        sdekit.check_target(standard_normal)
    with pytest.raises(sdekit.CompositionError, match="AbstractTarget; got function"):
        sdekit.compose(standard_normal)


def test_check_is_compiled_once_per_target_type():
    traces = []

    class Counted(sdekit.AbstractTarget):
        dim: int = eqx.field(static=True)
        mean: jax.Array

        def log_prob(self, x):
            traces.append(1)
            return -0.5 * jnp.sum((x - self.mean) ** 2)

    sdekit.check_target(Counted(2, jnp.zeros(2)))
    assert traces
    n = len(traces)
    sdekit.check_target(Counted(2, jnp.ones(2)))  # other values, same structure: no retrace
    assert len(traces) == n
    sdekit.check_target(Counted(3, jnp.ones(3)))  # another shape compiles again
    assert len(traces) > n


# --------------------------------------------------------------------------------------
# names and options


@pytest.mark.parametrize("typo", ["gmm4O", "gmm41", "gmm-40"])
def test_unknown_name_suggests(typo):
    with pytest.raises(sdekit.UnknownNameError) as e:
        sdekit.create("target", typo)
    msg = error_of(e)
    assert msg.startswith(f"unknown target {typo!r}.")
    assert "Did you mean 'gmm40'" in msg
    assert "Available: funnel, gaussian, gmm, gmm40" in msg
    assert isinstance(e.value, sdekit.SdekitError) and isinstance(e.value, KeyError)


def test_unknown_names_in_compose():
    with pytest.raises(sdekit.UnknownNameError, match="unknown target 'gmm4O'. Did you mean 'gmm40'"):
        sdekit.compose("gmm4O")
    with pytest.raises(sdekit.UnknownNameError, match="unknown sampler 'revers-sde'. Did you mean 'reverse-sde'"):
        sdekit.compose("gmm40", "revers-sde")
    with pytest.raises(sdekit.UnknownNameError, match="unknown process 'vpp'. Did you mean 'vp'"):
        sdekit.compose("gmm40", process="vpp")


def test_unknown_kind():
    with pytest.raises(sdekit.UnknownNameError, match="unknown kind 'targets'. Did you mean 'target'"):
        sdekit.create("targets", "gmm40")


def test_unknown_option_lists_valid_options():
    with pytest.raises(sdekit.CompositionError) as e:
        sdekit.create("target", "gmm40", dimm=3)
    msg = error_of(e)
    assert "target 'gmm40' has no option 'dimm'. Did you mean 'dim'?" in msg
    assert "Its options are: dim=2" in msg
    with pytest.raises(sdekit.CompositionError, match="Its options are: dim=None, mean=None"):
        sdekit.create("target", "gaussian", means=[0.0, 0.0])


def test_unknown_sampler_option_fails_before_building_parts():
    with pytest.raises(sdekit.CompositionError) as e:
        # the target is broken too, but the option is checked first (and cheaply)
        sdekit.compose(Target(2, lambda x: x), {"name": "reverse-sde", "step": 10})
    msg = error_of(e)
    assert "sampler 'reverse-sde' has no option 'step'. Did you mean 'steps'?" in msg
    assert "steps=500" in msg and "solver='euler'" in msg


def test_option_rejected_by_the_factory():
    with pytest.raises(sdekit.CompositionError, match="target 'gaussian': scale must be positive"):
        sdekit.create("target", "gaussian", scale=-1.0)


def test_part_given_as_a_sampler_option():
    with pytest.raises(sdekit.CompositionError, match=r"give process as a part \(compose\(\.\.\., process=\.\.\.\)\)"):
        sdekit.compose("gmm40", {"name": "reverse-sde", "process": "vp"})


def test_dict_part_without_a_name():
    with pytest.raises(sdekit.CompositionError, match="a process given as a dict needs a 'name'"):
        sdekit.compose("gmm40", process={"schedule": "cosine"})


def test_part_of_the_wrong_kind():
    gaussian = sdekit.create("target", "gaussian")
    with pytest.raises(sdekit.CompositionError, match="process must be .* AbstractProcess; got Gaussian"):
        sdekit.compose("gmm40", process=gaussian)
    with pytest.raises(sdekit.CompositionError, match="score must be .* AbstractScore; got VP"):
        sdekit.compose("gmm40", score=sdekit.create("process", "vp"))


def test_parts_are_checked_before_any_is_built():
    """A typo in the last part fails before the target is built and checked."""
    broken = Target(2, lambda x: x)  # would fail check_target
    with pytest.raises(sdekit.UnknownNameError, match="unknown score 'exakt'"):
        sdekit.compose(broken, score="exakt")
    with pytest.raises(sdekit.CompositionError, match="process 'vp' has no option 'shedule'"):
        sdekit.compose(broken, process={"name": "vp", "shedule": "cosine"})


# --------------------------------------------------------------------------------------
# parts that do not fit together


class LinearScore(sdekit.AbstractScore):
    """`s(t, x) = -W x`: a score built for the dimension of `W`."""

    W: jax.Array

    def __call__(self, t, x):
        return -self.W @ x


class ConstantScore(sdekit.AbstractScore):
    """Ignores `x`; returns a vector of dimension `dim`."""

    dim: int = eqx.field(static=True)

    def __call__(self, t, x):
        return jnp.zeros(self.dim) + t


def target_only_sampler(target, n_draws: int = 10):
    """A sampler that takes a target and nothing else."""
    raise AssertionError("not called in these tests")


def needs_scale(scale):
    """A target with a required option."""
    return sdekit.create("target", "gaussian", scale=scale)


class ComposePlugin:
    @sdekit.hookimpl
    def register_scores(self, register):
        register("linear-3d", lambda: LinearScore(jnp.eye(3)))

    @sdekit.hookimpl
    def register_samplers(self, register):
        register("target-only", target_only_sampler)

    @sdekit.hookimpl
    def register_targets(self, register):
        register("needs-scale", needs_scale)


@pytest.fixture
def compose_plugin():
    sdekit.register_plugin(ComposePlugin(), name="sdekit-test-compose")
    yield
    sdekit.unregister_plugin("sdekit-test-compose")


def test_score_of_another_dimension():
    with pytest.raises(sdekit.CompositionError) as e:
        sdekit.compose("gaussian", score=LinearScore(jnp.eye(3)))  # gaussian: dim 2
    msg = error_of(e)
    assert "score LinearScore fails on a point of shape (2,), the target's dimension" in msg
    assert "Give a score for dimension 2" in msg


def test_score_returning_another_dimension():
    with pytest.raises(sdekit.CompositionError) as e:
        sdekit.compose("gaussian", score=ConstantScore(3))
    msg = error_of(e)
    assert "score ConstantScore returns shape (3,) for a point of shape (2,); expected (2,)" in msg


def test_registered_score_of_another_dimension(compose_plugin):
    with pytest.raises(sdekit.CompositionError, match="score LinearScore fails on a point of shape"):
        sdekit.compose({"name": "gaussian", "dim": 2}, score="linear-3d")
    # The same score fits a 3-d target.
    sampler = sdekit.compose({"name": "gaussian", "dim": 3}, {"name": "reverse-sde", "steps": 4},
                             score="linear-3d")
    assert isinstance(sampler, sdekit.AbstractSampler)


def test_part_the_sampler_does_not_take(compose_plugin):
    with pytest.raises(sdekit.CompositionError) as e:
        sdekit.compose("gmm40", controller="whatever")  # checked before the name is looked up
    assert "sampler 'reverse-sde' does not take a controller (it takes: target, process, score)" in error_of(e)
    with pytest.raises(sdekit.CompositionError, match="sampler 'target-only' does not take a score .it takes: target.;"):
        sdekit.compose("gmm40", "target-only", score="exact")


def test_missing_required_option(compose_plugin):
    with pytest.raises(sdekit.CompositionError, match="target 'needs-scale' needs 'scale', which has no default"):
        sdekit.compose("needs-scale")
    target = sdekit.create("target", "needs-scale", scale=2.0)
    assert target.dim == 2


def test_compose_happy_path():
    sampler = sdekit.compose({"name": "gaussian", "dim": 2}, {"name": "reverse-sde", "steps": 4},
                             process={"name": "vp", "schedule": "cosine"})
    assert isinstance(sampler, sdekit.AbstractSampler)
    assert sampler.process.__class__.__name__ == "VP"
