"""The plugin system: plugins registered in a fixture, broken plugins, duplicate names and
the `SDEKIT_DISABLE_PLUGINS` / `SDEKIT_LOAD_PLUGINS` switches.

Every test leaves the process-wide plugin state as it found it (`fresh_plugins` resets it
after each test), so tests in the same pytest-xdist worker never see each other's plugins.
"""

import importlib.metadata
import runpy
import sys
import tomllib
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdekit
from sdekit import _plugins

#: The first-party plugins: the `sdekit` entry points that pyproject.toml declares.
FIRST_PARTY = set(
    tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    ["project"]["entry-points"]["sdekit"]
)
TOY = "sdekit-test-toy"


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Start from, and leave behind, the plugins of the installed entry points only."""
    _plugins.reset()
    yield
    _plugins.reset()


# --------------------------------------------------------------------------------------
# a plugin with a custom target (an exact Gaussian mixture) and a custom process

WEIGHTS = (0.3, 0.7)
MEANS = ((-3.0, 0.0), (3.0, 1.0))


class ToyMixture(sdekit.AbstractTarget):
    """A two-component Gaussian mixture in 2-d, unnormalised by `exp(log_Z)`."""

    dim: int = eqx.field(static=True)
    gm: sdekit.GaussianMixture
    _log_Z: float = eqx.field(static=True)

    def __init__(self, scale: float = 0.5, log_Z: float = 0.75):
        self.dim = 2
        covs = scale**2 * jnp.broadcast_to(jnp.eye(2), (2, 2, 2))
        self.gm = sdekit.GaussianMixture(jnp.asarray(WEIGHTS), jnp.asarray(MEANS), covs)
        self._log_Z = log_Z

    def log_prob(self, x):
        return self.gm.log_prob(x) + self._log_Z

    def sample(self, key, n):
        return self.gm.sample(key, n)

    @property
    def log_Z(self):
        return self._log_Z

    @property
    def mixture(self):
        return self.gm


class ToyOU(sdekit.AbstractProcess):
    """Ornstein-Uhlenbeck `dY = -Y dt + sqrt(2) dW`, stationary law N(0, I)."""

    T: float = 5.0
    t_min: float = 1e-3
    t_max: float = 5.0

    def drift(self, t, y):
        return -y

    def diffusion(self, t):
        return jnp.sqrt(2.0)

    def transition(self, s, t):
        a = jnp.exp(-(t - s))
        return a, jnp.sqrt(1.0 - a**2)

    def reference_std(self, t):
        return jnp.asarray(1.0)


def toy_ou() -> ToyOU:
    """An Ornstein-Uhlenbeck process for the tests."""
    return ToyOU()


class ToyPlugin:
    @sdekit.hookimpl
    def register_targets(self, register):
        register("toy-mixture", ToyMixture)

    @sdekit.hookimpl
    def register_processes(self, register):
        register("toy-ou", toy_ou)


@pytest.fixture
def toy():
    name = sdekit.register_plugin(ToyPlugin(), name=TOY)
    yield name
    sdekit.unregister_plugin(TOY)


def loaded() -> set[str]:
    return {name for name, _ in sdekit.plugin_manager().list_name_plugin()}


def test_first_party_plugins_are_entry_points():
    assert loaded() == FIRST_PARTY
    reg = sdekit.registry()
    assert reg.failures == []
    assert reg.get("target", "gmm40").plugin == "targets"
    assert reg.get("sampler", "reverse-sde").plugin == "samplers"


def test_registered_plugin_is_in_the_registry(toy):
    assert toy == TOY and TOY in loaded()
    reg = sdekit.registry()
    entry = reg.get("target", "toy-mixture")
    assert entry.plugin == TOY and entry.factory is ToyMixture
    assert entry.options() == {"scale": 0.5, "log_Z": 0.75}
    assert "two-component" in entry.description
    assert "toy-mixture" in reg.names("target") and "gmm40" in reg.names("target")
    assert reg.get("process", "toy-ou").plugin == TOY


def test_registered_plugin_parts_are_created(toy):
    target = sdekit.create("target", "toy-mixture", scale=0.25)
    assert isinstance(target, ToyMixture) and target.dim == 2
    np.testing.assert_allclose(target.gm.covs[0], 0.0625 * np.eye(2))
    assert isinstance(sdekit.create("process", "toy-ou"), ToyOU)


def test_compose_samples_with_plugin_parts(toy):
    """The plugin's target and process, the built-in `exact` score and `reverse-sde`."""
    sampler = sdekit.compose(
        {"name": "toy-mixture", "log_Z": 0.75},
        {"name": "reverse-sde", "steps": 100},
        process="toy-ou",
        score="exact",
    )
    assert isinstance(sampler.process, ToyOU) and isinstance(sampler.target, ToyMixture)
    n = 4000
    samples = sampler.sample(jax.random.PRNGKey(1), n)
    x = np.asarray(samples.x)
    assert x.shape == (n, 2) and np.all(np.isfinite(x))
    # Mass of the right-hand component: 0.7, standard error ~0.007.
    right = np.mean(x[:, 0] > 0)
    assert abs(right - WEIGHTS[1]) < 0.04, right
    # Within-component spread: the exact score recovers std 0.5 (the OU's own is 1);
    # 100 Euler steps leave a small bias (about +0.05).
    comp = x[x[:, 0] > 0] - np.asarray(MEANS[1])
    assert np.all(np.abs(comp.std(axis=0) - 0.5) < 0.15), comp.std(axis=0)
    # Exact discrete-time log-weights: log Z is estimated without bias.
    log_Z = float(sdekit.log_Z_estimate(samples.log_weights))
    assert abs(log_Z - 0.75) < 0.1, log_Z


def test_unregistered_plugin_is_gone(toy):
    sdekit.unregister_plugin(TOY)
    assert TOY not in loaded()
    with pytest.raises(sdekit.UnknownNameError, match="toy-mixture"):
        sdekit.create("target", "toy-mixture")
    assert "gmm40" in sdekit.registry().names("target")
    sdekit.unregister_plugin(TOY)  # unregistering twice is harmless (fixture teardown)


def test_module_plugin():
    module = types.ModuleType("sdekit_test_module_plugin")

    @sdekit.hookimpl
    def register_processes(register):
        register("module-ou", toy_ou)

    module.register_processes = register_processes
    name = sdekit.register_plugin(module)
    try:
        assert name == "sdekit_test_module_plugin"
        assert sdekit.registry().get("process", "module-ou").plugin == name
        assert isinstance(sdekit.create("process", "module-ou"), ToyOU)
    finally:
        sdekit.unregister_plugin(name)


def test_reset_forgets_registered_plugins(toy):
    _plugins.reset()
    assert loaded() == FIRST_PARTY
    assert "toy-mixture" not in sdekit.registry().names("target")


def test_python_m_sdekit_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sdekit", "--version"])
    monkeypatch.delitem(sys.modules, "sdekit.__main__", raising=False)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("sdekit", run_name="__main__")
    assert exit_.value.code in (0, None)
    assert capsys.readouterr().out.strip() == f"sdekit {sdekit.__version__}"


# --------------------------------------------------------------------------------------
# broken plugins are reported by name and skipped


class FakeEntryPoint:
    """An entry point of the `sdekit` group whose `load()` we control."""

    group = "sdekit"
    dist = None

    def __init__(self, name, load):
        self.name, self.value, self._load = name, f"fake_{name.replace('-', '_')}", load

    def load(self):
        return self._load()


def raise_on_import():
    raise ImportError("cannot import name 'gone' from 'numpy'")


class MisspeltPlugin:
    @sdekit.hookimpl
    def register_target(self, register):  # not register_targets
        register("misspelt", ToyMixture)


class UndecoratedPlugin:
    def register_targets(self, register):  # no @sdekit.hookimpl
        register("undecorated", ToyMixture)


class HalfBrokenPlugin:
    """Its target hook fails half-way; its process hook is fine."""

    @sdekit.hookimpl
    def register_targets(self, register):
        register("half-registered", ToyMixture)
        raise RuntimeError("the plugin's own bug")

    @sdekit.hookimpl
    def register_processes(self, register):
        register("half-ou", toy_ou)


class DuplicatePlugin:
    @sdekit.hookimpl
    def register_targets(self, register):
        register("gmm40", ToyMixture)
        register("dup-only", ToyMixture)


@pytest.fixture
def extra_entry_points(monkeypatch):
    """Add fake entry points after the real ones: `extra_entry_points(ep, ...)`."""

    def install(*eps):
        real = importlib.metadata.entry_points

        def entry_points(**kwargs):
            found = list(real(**kwargs))
            return found + list(eps) if kwargs.get("group") == "sdekit" else found

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        _plugins.reset()

    return install


def failures() -> dict[str, str]:
    return {f.plugin: f.error for f in sdekit.registry().failures}


def test_plugin_that_fails_to_import_is_skipped_by_name(extra_entry_points):
    extra_entry_points(
        importlib.metadata.EntryPoint("sdekit-test-missing", "sdekit_test_no_such_module", "sdekit"),
        FakeEntryPoint("sdekit-test-broken", raise_on_import),
    )
    with pytest.warns(UserWarning) as record:
        reg = sdekit.registry()
    messages = " | ".join(str(w.message) for w in record)
    assert "sdekit plugin 'sdekit-test-missing'" in messages
    assert "ModuleNotFoundError" in messages and "sdekit_test_no_such_module" in messages
    assert "sdekit plugin 'sdekit-test-broken'" in messages and "cannot import name" in messages
    assert set(failures()) == {"sdekit-test-missing", "sdekit-test-broken"}
    # The others load and work.
    assert loaded() == FIRST_PARTY
    assert "gmm40" in reg.names("target") and "reverse-sde" in reg.names("sampler")
    assert sdekit.create("target", "gmm40").dim == 2


def test_broken_plugin_does_not_take_the_cli_down(extra_entry_points):
    from click.testing import CliRunner

    from sdekit.cli import cli

    extra_entry_points(FakeEntryPoint("sdekit-test-broken", raise_on_import))
    result = CliRunner().invoke(cli, ["list", "targets"])
    assert result.exit_code == 0, result.output
    assert "gmm40" in result.stdout
    assert "sdekit-test-broken" in result.stderr


def test_misspelt_hook_is_reported_and_skipped(extra_entry_points):
    extra_entry_points(FakeEntryPoint("sdekit-test-misspelt", MisspeltPlugin))
    with pytest.warns(UserWarning, match="sdekit-test-misspelt"):
        reg = sdekit.registry()
    error = failures()["sdekit-test-misspelt"]
    assert "unknown hook 'register_target'" in error
    assert "Did you mean 'register_targets'" in error
    assert "sdekit-test-misspelt" not in loaded() and FIRST_PARTY <= loaded()
    assert "misspelt" not in reg.names("target") and "gmm40" in reg.names("target")


def test_register_plugin_rejects_a_misspelt_hook():
    with pytest.raises(sdekit.PluginError) as error:
        sdekit.register_plugin(MisspeltPlugin(), name="sdekit-test-misspelt")
    message = str(error.value)
    assert "'sdekit-test-misspelt'" in message and "'register_target'" in message
    assert "Did you mean 'register_targets'" in message
    assert "sdekit-test-misspelt" not in loaded()
    # The plugin manager is still usable: a good plugin registers after the bad one.
    sdekit.register_plugin(ToyPlugin(), name=TOY)
    assert "toy-mixture" in sdekit.registry().names("target")


def test_register_plugin_rejects_an_undecorated_hook():
    with pytest.raises(sdekit.PluginError, match=r"'sdekit-test-undecorated'.*hookimpl"):
        sdekit.register_plugin(UndecoratedPlugin(), name="sdekit-test-undecorated")
    assert "sdekit-test-undecorated" not in loaded()


def test_hook_with_a_wrong_argument_is_rejected():
    class WrongArgument:
        @sdekit.hookimpl
        def register_targets(self, registry):
            registry("wrong", ToyMixture)

    with pytest.raises(sdekit.PluginError, match=r"'sdekit-test-wrong'.*registry"):
        sdekit.register_plugin(WrongArgument(), name="sdekit-test-wrong")


def test_failing_hook_is_skipped_whole_and_the_rest_is_kept(extra_entry_points):
    extra_entry_points(FakeEntryPoint("sdekit-test-half", HalfBrokenPlugin))
    with pytest.warns(UserWarning, match="sdekit-test-half.*the plugin's own bug"):
        reg = sdekit.registry()
    assert "register_targets" in failures()["sdekit-test-half"]
    # Nothing of the failed hook is kept, not even what it registered before failing ...
    assert "half-registered" not in reg.names("target")
    # ... while its other hooks, and the other plugins, work.
    assert reg.get("process", "half-ou").plugin == "sdekit-test-half"
    assert "gmm40" in reg.names("target")


def test_register_plugin_rejects_a_failing_hook():
    with pytest.raises(sdekit.PluginError, match="'sdekit-test-half'.*the plugin's own bug"):
        sdekit.register_plugin(HalfBrokenPlugin(), name="sdekit-test-half")
    assert "sdekit-test-half" not in loaded()
    assert "half-ou" not in sdekit.registry().names("process")


@pytest.mark.parametrize(
    ("name", "factory", "expected"),
    [
        ("", ToyMixture, "invalid name ''"),
        (3, ToyMixture, "invalid name 3"),
        ("not-callable", 42, "factory must be callable"),
    ],
)
def test_malformed_registration_names_the_plugin(name, factory, expected):
    class Malformed:
        @sdekit.hookimpl
        def register_targets(self, register):
            register(name, factory)

    with pytest.raises(sdekit.PluginError) as error:
        sdekit.register_plugin(Malformed(), name="sdekit-test-malformed")
    assert "'sdekit-test-malformed'" in str(error.value) and expected in str(error.value)


def test_factory_returning_the_wrong_type_names_the_plugin():
    class WrongType:
        @sdekit.hookimpl
        def register_targets(self, register):
            register("not-a-target", lambda: jnp.zeros(2))

    sdekit.register_plugin(WrongType(), name="sdekit-test-wrong-type")
    with pytest.raises(sdekit.PluginError) as error:
        sdekit.create("target", "not-a-target")
    message = str(error.value)
    assert "plugin 'sdekit-test-wrong-type'" in message
    assert "not an AbstractTarget" in message and "'not-a-target'" in message
    with pytest.raises(sdekit.PluginError, match="sdekit-test-wrong-type"):
        sdekit.compose("not-a-target")


# --------------------------------------------------------------------------------------
# duplicate names


def test_register_plugin_rejects_a_duplicate_name():
    with pytest.raises(sdekit.PluginError) as error:
        sdekit.register_plugin(DuplicatePlugin(), name="sdekit-test-dup")
    message = str(error.value)
    assert "target 'gmm40'" in message
    assert "plugin 'targets'" in message and "plugin 'sdekit-test-dup'" in message
    # Not registered at all: the built-in gmm40 is untouched.
    assert "sdekit-test-dup" not in loaded() and "dup-only" not in sdekit.registry().names("target")
    assert sdekit.registry().get("target", "gmm40").plugin == "targets"


def test_duplicate_between_two_registered_plugins():
    sdekit.register_plugin(ToyPlugin(), name=TOY)
    with pytest.raises(sdekit.PluginError, match=f"plugin '{TOY}' and plugin 'sdekit-test-other'"):
        sdekit.register_plugin(ToyPlugin(), name="sdekit-test-other")
    with pytest.raises(sdekit.PluginError, match="already registered"):
        sdekit.register_plugin(DuplicatePlugin(), name=TOY)  # a plugin name is unique too


def test_duplicate_from_entry_points_raises_naming_both(extra_entry_points):
    extra_entry_points(FakeEntryPoint("sdekit-test-dup", DuplicatePlugin))
    with pytest.warns(UserWarning, match="'gmm40'.*'targets'.*'sdekit-test-dup'"):
        reg = sdekit.registry()
    assert "'targets'" in failures()["sdekit-test-dup"]
    for build in (lambda: sdekit.create("target", "gmm40"), lambda: sdekit.compose("gmm40")):
        with pytest.raises(sdekit.PluginError) as error:
            build()
        message = str(error.value)
        assert "'gmm40'" in message
        assert "plugin 'targets'" in message and "plugin 'sdekit-test-dup'" in message
        assert "SDEKIT_DISABLE_PLUGINS" in message
    # Only the contested name is unusable.
    assert reg.get("target", "dup-only").plugin == "sdekit-test-dup"
    assert reg.get("target", "funnel").plugin == "targets"


def test_two_entry_points_with_one_plugin_name(extra_entry_points):
    extra_entry_points(FakeEntryPoint("targets", DuplicatePlugin))
    with pytest.warns(UserWarning, match="'targets'.*already used"):
        reg = sdekit.registry()
    assert reg.get("target", "gmm40").plugin == "targets"
    assert "dup-only" not in reg.names("target")


# --------------------------------------------------------------------------------------
# SDEKIT_DISABLE_PLUGINS and SDEKIT_LOAD_PLUGINS


def test_disable_plugins(monkeypatch):
    monkeypatch.setenv("SDEKIT_DISABLE_PLUGINS", "targets, scores")
    _plugins.reset()
    assert loaded() == FIRST_PARTY - {"targets", "scores"}
    reg = sdekit.registry()
    plugins = {e.plugin for kind in ("target", "score") for e in reg.entries[kind].values()}
    assert not plugins & {"targets", "scores"}
    assert "vp" in reg.names("process")
    with pytest.raises(sdekit.UnknownNameError, match="unknown target 'gmm40'"):
        sdekit.create("target", "gmm40")


def test_load_plugins_allow_list(monkeypatch):
    monkeypatch.setenv("SDEKIT_LOAD_PLUGINS", "targets,processes")
    _plugins.reset()
    assert loaded() == {"targets", "processes"}
    assert sdekit.registry().names("sampler") == []
    assert sdekit.create("target", "gmm40").dim == 2


def test_load_plugins_empty_loads_none(monkeypatch):
    monkeypatch.setenv("SDEKIT_LOAD_PLUGINS", "")
    _plugins.reset()
    assert loaded() == set()
    assert all(sdekit.registry().names(kind) == [] for kind in sdekit.KINDS)


def test_disable_and_load_combine(monkeypatch):
    monkeypatch.setenv("SDEKIT_LOAD_PLUGINS", "targets,scores")
    monkeypatch.setenv("SDEKIT_DISABLE_PLUGINS", "scores")
    _plugins.reset()
    assert loaded() == {"targets"}


def test_disabled_broken_plugin_is_not_even_imported(monkeypatch, extra_entry_points):
    monkeypatch.setenv("SDEKIT_DISABLE_PLUGINS", "sdekit-test-broken")

    def must_not_load():
        raise AssertionError("a disabled plugin was imported")

    extra_entry_points(FakeEntryPoint("sdekit-test-broken", must_not_load))
    assert sdekit.registry().failures == []
    assert loaded() == FIRST_PARTY


def test_env_naming_no_plugin_warns(monkeypatch):
    monkeypatch.setenv("SDEKIT_DISABLE_PLUGINS", "target")  # the plugin is 'targets'
    _plugins.reset()
    with pytest.warns(UserWarning, match=r"SDEKIT_DISABLE_PLUGINS names 'target'.*targets"):
        sdekit.registry()
    assert loaded() == FIRST_PARTY
