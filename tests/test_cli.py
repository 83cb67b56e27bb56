"""The `sdekit` command line, tested against a fake plugin registered in a fixture."""

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import _config as config_module
from sdekit import _run as run_module
from sdekit import io as sio
from sdekit.cli import cli

PLUGIN = "sdekit-test-fake"


# --------------------------------------------------------------------------------------
# the fake plugin


class FakeGauss(sdekit.AbstractTarget):
    dim: int = eqx.field(static=True)
    mean: float
    scale: float

    def log_prob(self, x):
        return sdekit.gaussian_log_prob(x, self.mean, self.scale) + 0.5

    def sample(self, key, n):
        return self.mean + self.scale * jax.random.normal(key, (n, self.dim))

    @property
    def log_Z(self):
        return 0.5


def fake_gauss(dim: int = 2, mean: float = 1.0, scale: float = 1.0) -> FakeGauss:
    """A test Gaussian N(mean, scale² I) times e^0.5.

    More words that `list` leaves out.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return FakeGauss(dim, mean, scale)


class FakeProcess(sdekit.AbstractProcess):
    sigma: float
    T: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0

    def drift(self, t, y):
        return jnp.zeros_like(y)

    def diffusion(self, t):
        return jnp.asarray(self.sigma)

    def transition(self, s, t):
        return jnp.asarray(1.0), self.sigma * jnp.sqrt(t - s)

    def reference_std(self, t):
        return self.sigma * jnp.sqrt(t)


def fake_process(sigma: float = 1.0, t_max: float | None = None) -> FakeProcess:
    """A test Brownian motion."""
    return FakeProcess(sigma)


class FakeScore(sdekit.AbstractScore):
    strength: float

    def __call__(self, t, x):
        return -self.strength * x


def fake_score(target, process, strength: float = 1.0) -> FakeScore:
    """A test score that receives the composed target and process."""
    assert isinstance(target, FakeGauss) and isinstance(process, FakeProcess)
    return FakeScore(strength)


class FakeSampler(sdekit.AbstractSampler):
    target: sdekit.AbstractTarget
    process: FakeProcess
    score: FakeScore
    steps: int = eqx.field(static=True)
    scale: float
    weights: bool = eqx.field(static=True)
    nonfinite: int = eqx.field(static=True)

    def sample(self, key, n):
        std = self.scale * self.process.sigma
        x = 1.0 + std * jax.random.normal(key, (n, self.target.dim))
        x = x.at[: self.nonfinite].set(jnp.nan)
        if not self.weights:
            return sdekit.Samples(x)
        lw = jax.vmap(self.target.log_prob)(x) - sdekit.gaussian_log_prob(x, 1.0, std)
        return sdekit.Samples(x, lw)


def fake_sampler(target, process="fake-process", score="fake-score", steps: int = 10,
                 scale: float = 1.5, weights: bool = True, nonfinite: int = 0) -> FakeSampler:
    """A test sampler: a Gaussian proposal with exact log-weights."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return FakeSampler(target, process, score, steps, scale, weights, nonfinite)


class PlainSampler(sdekit.AbstractSampler):
    target: sdekit.AbstractTarget

    def sample(self, key, n):
        return sdekit.Samples(jax.random.normal(key, (n, self.target.dim)))


def plain_sampler(target) -> PlainSampler:
    """A test sampler with no options and no parts but the target."""
    return PlainSampler(target)


class FakeDiag(sdekit.AbstractDiagnostic):
    def __call__(self, key, *, target=None, sampler=None, samples=None):
        return {"fake_mean": jnp.nanmean(samples.x), "fake_nan": jnp.nan,
                "fake_vec": jnp.arange(2.0), "n": 123.0}


    def plot(self, values):
        from matplotlib.figure import Figure

        fig = Figure()
        fig.add_subplot().plot(np.asarray(values["fake_vec"]))
        return fig


class BrokenDiag(sdekit.AbstractDiagnostic):
    def __call__(self, key, *, target=None, sampler=None, samples=None):
        raise RuntimeError("this diagnostic is broken")


@click.command(name="fake-hello")
def fake_hello():
    """Say hello (added by a plugin)."""
    click.echo("hello from a plugin")


class FakePlugin:
    @sdekit.hookimpl
    def register_targets(self, register):
        register("fake-gauss", fake_gauss)

    @sdekit.hookimpl
    def register_processes(self, register):
        register("fake-process", fake_process)

    @sdekit.hookimpl
    def register_scores(self, register):
        register("fake-score", fake_score)

    @sdekit.hookimpl
    def register_samplers(self, register):
        register("fake-sampler", fake_sampler)
        register("fake-plain", plain_sampler)

    @sdekit.hookimpl
    def register_diagnostics(self, register):
        register("fake-diag", FakeDiag)
        register("fake-broken-diag", BrokenDiag)

    @sdekit.hookimpl
    def register_commands(self, cli):
        cli.add_command(fake_hello)


class BrokenCommandsPlugin:
    @sdekit.hookimpl
    def register_commands(self, cli):
        raise RuntimeError("cannot add my commands")


class HijackPlugin:
    @sdekit.hookimpl
    def register_commands(self, cli):
        @click.command(name="sample")
        def hijacked():
            click.echo("hijacked")

        cli.add_command(hijacked)


@pytest.fixture
def fake(monkeypatch):
    sdekit.register_plugin(FakePlugin(), PLUGIN)
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS",
                        ("fake-diag", "fake-broken-diag", "not-registered"))
    yield
    sdekit.unregister_plugin(PLUGIN)


@pytest.fixture
def runner():
    return CliRunner()


FAST = ["sample", "fake-gauss", "--sampler", "fake-sampler", "-n", "64"]


def one_line_error(result, *needles):
    """A user error: non-zero exit, exactly one `Error:` line on stderr, no traceback."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def registered(kind, *names):
    return all(n in sdekit.registry().names(kind) for n in names)


# --------------------------------------------------------------------------------------
# the group


def test_no_arguments_prints_help(runner):
    result = runner.invoke(cli, [])
    assert result.exit_code == 0
    assert "Usage: sdekit" in result.output
    for command in ("info", "plugins", "list", "show", "sample"):
        assert command in result.output


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sdekit {sdekit.__version__}"


def test_unknown_command_and_option_are_one_line(runner):
    one_line_error(runner.invoke(cli, ["frobnicate"]), "frobnicate")
    result = runner.invoke(cli, ["--bogus"])
    one_line_error(result, "--bogus")
    assert result.exit_code == 2


def test_info(runner, fake):
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for word in ("sdekit", "jax", "equinox", "diffrax", "backend", "devices", PLUGIN,
                 "failures"):
        assert word in result.output
    data = json.loads(runner.invoke(cli, ["info", "--json"]).output)
    assert data["backend"] == jax.default_backend()
    assert PLUGIN in data["plugins"] and data["failures"] == []
    assert data["versions"]["jax"] == jax.__version__


def test_plugins(runner, fake):
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert PLUGIN in result.output and "fake-gauss" in result.output
    data = json.loads(runner.invoke(cli, ["plugins", "--json"]).output)
    mine = data["plugins"][PLUGIN]
    assert mine["names"]["target"] == ["fake-gauss"]
    assert mine["names"]["sampler"] == ["fake-plain", "fake-sampler"]
    assert mine["commands"] == ["fake-hello"]
    assert "version" in mine
    assert data["failures"] == []


def test_plugin_load_failures_are_listed(runner, fake, monkeypatch):
    from sdekit._plugins import PluginFailure

    reg = sdekit.registry()
    monkeypatch.setattr(reg, "failures", [PluginFailure("sdekit-broken", "ImportError: nope")])
    data = json.loads(runner.invoke(cli, ["plugins", "--json"]).output)
    assert data["failures"] == [{"plugin": "sdekit-broken", "error": "ImportError: nope"}]
    for command in (["plugins"], ["info"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0
        assert "sdekit-broken" in result.output and "ImportError: nope" in result.output


def test_list(runner, fake):
    for kind in ("targets", "target", "TARGETS"):
        result = runner.invoke(cli, ["list", kind])
        assert result.exit_code == 0, result.output
        line = next(l for l in result.output.splitlines() if l.startswith("fake-gauss"))
        assert PLUGIN in line and "A test Gaussian" in line and "More words" not in line
    data = json.loads(runner.invoke(cli, ["list", "samplers", "--json"]).output)
    assert {"name": "fake-plain", "plugin": PLUGIN,
            "description": "A test sampler with no options and no parts but the target."} in data
    everything = runner.invoke(cli, ["list"])
    assert everything.exit_code == 0 and "diagnostics:" in everything.output
    assert "fake-diag" in everything.output
    one_line_error(runner.invoke(cli, ["list", "targes"]), "Did you mean 'targets'")


def test_show(runner, fake):
    result = runner.invoke(cli, ["show", "sampler", "fake-sampler"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "A test sampler" in out and PLUGIN in out
    assert 'process  "fake-process"' in out and 'score    "fake-score"' in out
    assert "steps      10" in out and "scale      1.5" in out and "weights    true" in out
    parts_and_options = out.split("options:")[1]
    assert "target" not in parts_and_options and "process" not in parts_and_options
    data = json.loads(runner.invoke(cli, ["show", "score", "fake-score", "--json"]).output)
    assert data["options"] == {"strength": 1.0}
    assert data["plugin"] == PLUGIN
    one_line_error(runner.invoke(cli, ["show", "target", "fake-gaus"]),
                   "Did you mean 'fake-gauss'")
    one_line_error(runner.invoke(cli, ["show", "samplr", "fake-sampler"]), "Did you mean")


def test_plugin_commands(runner, fake):
    result = runner.invoke(cli, ["fake-hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output
    assert "fake-hello" in runner.invoke(cli, ["--help"]).output


def test_broken_command_plugins_are_reported_not_fatal(runner, fake):
    sdekit.register_plugin(BrokenCommandsPlugin(), "sdekit-test-broken")
    sdekit.register_plugin(HijackPlugin(), "sdekit-test-hijack")
    try:
        result = runner.invoke(cli, ["plugins", "--json"])
        assert result.exit_code == 0, result.output
        failures = {f["plugin"]: f["error"] for f in json.loads(result.stdout)["failures"]}
        assert "cannot add my commands" in failures["sdekit-test-broken"]
        assert "'sample'" in failures["sdekit-test-hijack"]
        assert "sdekit-test-broken" in result.stderr  # and a warning says so
        assert "fake-hello" in runner.invoke(cli, ["--help"]).output  # others unaffected
        help_ = runner.invoke(cli, ["sample", "--help"])
        assert "Draw samples" in help_.output and "hijacked" not in help_.output
    finally:
        sdekit.unregister_plugin("sdekit-test-broken")
        sdekit.unregister_plugin("sdekit-test-hijack")
    assert runner.invoke(cli, ["plugins", "--json"]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["plugins", "--json"]).output)["failures"] == []


def test_debug_shows_traceback(runner, fake, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["--debug", "sample", "fake-gaus", "--out", str(out)])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "UnknownNameError" in result.stderr
    assert not out.exists()
    result = runner.invoke(cli, ["sample", "fake-gaus", "--out", str(out)],
                           env={"SDEKIT_DEBUG": "1"})
    assert "Traceback" in result.stderr


# --------------------------------------------------------------------------------------
# sample


def test_sample_writes_everything(runner, fake, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(cli, [*FAST, "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(run_module.OUTPUT_FILES)

    arrays = sio.load_npz(out / "samples.npz")
    assert set(arrays) == {"x", "log_weights"}
    assert arrays["x"].shape == (64, 2) and arrays["log_weights"].shape == (64,)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 64 and metrics["dim"] == 2 and metrics["seed"] == 3
    assert metrics["n_nonfinite"] == 0 and metrics["has_log_weights"] is True
    assert metrics["train_seconds"] == 0.0
    assert metrics["sample_seconds"] > 0 and metrics["compile_seconds"] > 0
    assert metrics["fake_mean"] == pytest.approx(float(np.mean(arrays["x"])), rel=1e-5)
    assert metrics["fake_nan"] is None  # strict JSON: non-finite values are null
    assert metrics["fake_vec"] == [0.0, 1.0]
    assert metrics["fake-diag.n"] == 123.0  # a clash with a run key is prefixed
    assert "this diagnostic is broken" in metrics["diagnostic_errors"]["fake-broken-diag"]
    assert "not-registered" not in json.dumps(metrics)
    assert "fake-broken-diag" in result.stderr  # reported, the run still succeeds

    config = tomllib.loads((out / "config.toml").read_text())
    assert config == {
        "seed": 3,
        "n": 64,
        "target": {"name": "fake-gauss", "dim": 2, "mean": 1.0, "scale": 1.0},
        "sampler": {"name": "fake-sampler", "steps": 10, "scale": 1.5, "weights": True,
                    "nonfinite": 0},
        "process": {"name": "fake-process", "sigma": 1.0},  # t_max=None is left out
        "score": {"name": "fake-score", "strength": 1.0},
    }
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert str(out) in result.stdout


def test_config_round_trip_is_bit_identical(runner, fake, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    args = [*FAST, "--seed", "11", "--set", "process.sigma=0.7", "--set", "target.dim=3",
            "--steps", "4"]
    assert runner.invoke(cli, [*args, "--out", str(first)]).exit_code == 0
    result = runner.invoke(cli, ["sample", "--config", str(first / "config.toml"),
                                 "--out", str(second)])
    assert result.exit_code == 0, result.output
    a, b = sio.load_npz(first / "samples.npz"), sio.load_npz(second / "samples.npz")
    assert a["x"].shape == (64, 3)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["log_weights"], b["log_weights"])
    assert (first / "config.toml").read_text() == (second / "config.toml").read_text()
    config = tomllib.loads((first / "config.toml").read_text())
    assert config["sampler"]["steps"] == 4 and config["process"]["sigma"] == 0.7


def test_command_line_overrides_config(runner, fake, tmp_path):
    cfg = tmp_path / "in.toml"
    cfg.write_text(
        'seed = 5\nn = 7\n[target]\nname = "fake-gauss"\ndim = 3\n'
        '[sampler]\nname = "fake-sampler"\nsteps = 2\nscale = 2.0\n'
        '[process]\nsigma = 0.5\n'  # no name: the sampler's default process
    )
    result = runner.invoke(cli, ["sample", "--config", str(cfg), "-n", "9", "--steps", "3",
                                 "--set", "sampler.scale=3", "--dry-run"])
    assert result.exit_code == 0, result.output
    config = tomllib.loads(result.stdout)
    assert config["seed"] == 5 and config["n"] == 9
    assert config["target"]["dim"] == 3
    assert config["sampler"]["steps"] == 3
    assert config["sampler"]["scale"] == 3.0 and isinstance(config["sampler"]["scale"], float)
    assert config["process"] == {"name": "fake-process", "sigma": 0.5}
    # a part renamed on the command line drops the options the file gave its old name
    result = runner.invoke(cli, ["sample", "--config", str(cfg), "--sampler", "fake-plain",
                                 "--dry-run"])
    one_line_error(result, "does not take a process")
    cfg.write_text('[target]\nname = "fake-gauss"\ndim = 3\n[sampler]\nname = "fake-sampler"\n'
                   'steps = 2\n')
    result = runner.invoke(cli, ["sample", "--config", str(cfg), "--sampler", "fake-plain",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["sampler"] == {"name": "fake-plain"}
    assert tomllib.loads(result.stdout)["target"]["dim"] == 3


def test_dry_run_writes_nothing(runner, fake, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, [*FAST, "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["sampler"]["name"] == "fake-sampler"
    assert not out.exists()


def test_default_out_dir(runner, fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs/fake-gauss-fake-sampler/samples.npz").is_file()


def test_missing_log_weights_are_omitted(runner, fake, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, [*FAST, "--set", "sampler.weights=false", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(sio.load_npz(out / "samples.npz")) == {"x"}
    assert json.loads((out / "metrics.json").read_text())["has_log_weights"] is False


def test_nonfinite_samples_are_counted_not_dropped(runner, fake, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, [*FAST, "--set", "sampler.nonfinite=5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sio.load_npz(out / "samples.npz")["x"].shape == (64, 2)
    assert json.loads((out / "metrics.json").read_text())["n_nonfinite"] == 5
    assert "5 of 64 samples are not finite" in result.stderr


@pytest.mark.parametrize("dim", [1, 5])
def test_plots_in_other_dimensions(runner, fake, tmp_path, dim):
    out = tmp_path / "out"
    result = runner.invoke(cli, [*FAST, "--set", f"target.dim={dim}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "not drawn" not in result.stderr


def test_plain_sampler_has_no_parts(runner, fake):
    result = runner.invoke(cli, ["sample", "fake-gauss", "--sampler", "fake-plain", "-n", "8",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert set(tomllib.loads(result.stdout)) == {"seed", "n", "target", "sampler"}


BAD = [
    (["sample", "fake-gaus", "--sampler", "fake-sampler"], ["Did you mean 'fake-gauss'"]),
    (["sample", "fake-gauss", "--sampler", "fake-samplr"], ["unknown sampler", "Did you mean"]),
    ([*FAST, "--steps", "0"], ["--steps", ">= 1"]),
    ([*FAST, "-n", "-5"], ["-n", ">= 1"]),
    ([*FAST, "--seed", "-1"], ["--seed"]),
    ([*FAST, "--seed", str(2**32)], ["--seed"]),
    ([*FAST, "--set", "foo"], ["SECTION.OPTION=VALUE", "'foo'"]),
    ([*FAST, "--set", "nosection=1"], ["'nosection'", "target, sampler"]),
    ([*FAST, "--set", "sampler.bogus=1"], ["sampler.bogus", "steps, scale, weights"]),
    ([*FAST, "--set", "sampler.stpes=2"], ["sampler.stpes", "Did you mean 'steps'"]),
    ([*FAST, "--set", "process.sigm=2"], ["process.sigm", "Did you mean 'sigma'"]),
    ([*FAST, "--set", "proces.sigma=2"], ["'proces.sigma'", "Did you mean 'process'"]),
    ([*FAST, "--set", "sampler.name=fake-plain"], ["--sampler"]),
    ([*FAST, "--set", "sampler.steps="], ["needs a value"]),
    ([*FAST, "--set", "sampler.weights=1"], ["sampler.weights", "true or false"]),
    ([*FAST, "--set", "sampler.scale=big"], ["sampler.scale", "number"]),
    ([*FAST, "--set", "sampler.steps=0"], ["steps must be >= 1"]),  # the factory's check
    ([*FAST, "--set", "sampler.process=x"], ["sampler.process is not an option"]),
    ([*FAST, "--process", "fake-proces"], ["unknown process", "Did you mean"]),
    (["sample", "fake-gauss", "--sampler", "fake-plain", "--steps", "3"],
     ["fake-plain", "no 'steps' option"]),
    (["sample", "fake-gauss", "--sampler", "fake-plain", "--score", "fake-score"],
     ["does not take a score"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(a[-2:]) for a, _ in BAD])
def test_bad_inputs_are_one_line_errors(runner, fake, tmp_path, args, needles):
    out = tmp_path / "out"
    result = runner.invoke(cli, [*args, "--out", str(out)])
    one_line_error(result, *needles)
    assert not out.exists()


@pytest.mark.parametrize("text,needles", [
    ("foo = 1\n", ["unknown key 'foo'", "seed, n, target"]),
    ('[target]\nname = "fake-gauss"\nbogus = 1\n', ["target.bogus", "dim, mean, scale"]),
    ("n = 0\n", ["n must be an integer >= 1"]),
    ('n = "many"\n', ["n must be an integer"]),
    ("target = 3\n", ["[target] must be a name or a table"]),
    ("seed = = 1\n", ["not valid TOML"]),
])
def test_bad_config_files(runner, fake, tmp_path, text, needles):
    cfg, out = tmp_path / "bad.toml", tmp_path / "out"
    cfg.write_text(text)
    result = runner.invoke(cli, ["sample", "fake-gauss", "--sampler", "fake-sampler",
                                 "--config", str(cfg), "--out", str(out)])
    one_line_error(result, *needles)
    assert not out.exists()
    one_line_error(runner.invoke(cli, ["sample", "--config", str(tmp_path / "missing.toml")]),
                   "does not exist")


def test_unwritable_out(runner, fake, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "sub", blocker / "sub" / "deeper"):
        result = runner.invoke(cli, [*FAST, "--out", str(out)])
        one_line_error(result, "not a directory")
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_failed_write_leaves_no_directory(runner, fake, tmp_path, monkeypatch):
    real = sio.atomic_write

    def failing(path, data):
        if Path(path).name == "metrics.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(sio, "atomic_write", failing)
    out = tmp_path / "new" / "out"
    one_line_error(runner.invoke(cli, [*FAST, "--out", str(out)]), "No space left")
    assert not out.exists()


def test_rerun_replaces_files(runner, fake, tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(cli, [*FAST, "--out", str(out)]).exit_code == 0
    first = sio.load_npz(out / "samples.npz")["x"]
    assert runner.invoke(cli, [*FAST, "--seed", "1", "--out", str(out)]).exit_code == 0
    second = sio.load_npz(out / "samples.npz")["x"]
    assert not np.array_equal(first, second)
    assert tomllib.loads((out / "config.toml").read_text())["seed"] == 1


# --------------------------------------------------------------------------------------
# helpers


def test_parse_set():
    assert sdekit.parse_set("sampler.steps=100") == ("sampler", "steps", 100)
    assert sdekit.parse_set("process.schedule=cosine") == ("process", "schedule", "cosine")
    assert sdekit.parse_set('target.label="1"') == ("target", "label", "1")
    assert sdekit.parse_set("target.mean=[1, 2.5]") == ("target", "mean", [1, 2.5])
    assert sdekit.parse_set("sampler.exact=true") == ("sampler", "exact", True)
    assert sdekit.parse_set("process.beta_max=1e-3") == ("process", "beta_max", 1e-3)
    assert sdekit.parse_set("score.x=a=b") == ("score", "x", "a=b")


def test_atomic_write(tmp_path):
    path = tmp_path / "f.json"
    sio.atomic_write(path, "one")
    sio.atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(OSError):
        sio.atomic_write(tmp_path / "missing-dir" / "f", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_json_is_strict():
    text = sio.json_dumps({"a": np.float32(1.5), "b": float("inf"), "c": jnp.arange(2),
                           "d": np.int64(3), "e": True})
    assert json.loads(text) == {"a": 1.5, "b": None, "c": [0.0, 1.0], "d": 3.0, "e": True}
    assert "Infinity" not in text and "NaN" not in text


# --------------------------------------------------------------------------------------
# diagnose


PNG = b"\x89PNG\r\n\x1a\n"


def test_diagnose_reproduces_the_run_metrics_and_draws(runner, fake, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(cli, [*FAST, "--out", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["diagnose", str(out), "-d", "fake-diag"])
    assert result.exit_code == 0, result.output
    assert "fake-diag.fake_mean" in result.output
    found = json.loads((out / "diagnostics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert found["fake-diag"]["fake_mean"] == metrics["fake_mean"]
    assert found["fake-diag"]["fake_vec"] == [0.0, 1.0] and found["fake-diag"]["fake_nan"] is None
    assert (out / "fake-diag.png").read_bytes().startswith(PNG)


def test_diagnose_keeps_results_when_one_fails(runner, fake, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(cli, [*FAST, "--out", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["diagnose", str(out)])  # the defaults, one broken
    assert result.exit_code == 1
    assert "this diagnostic is broken" in result.stderr and "Traceback" not in result.output
    found = json.loads((out / "diagnostics.json").read_text())
    assert set(found) == {"fake-diag", "errors"}
    assert "this diagnostic is broken" in found["errors"]["fake-broken-diag"]


@pytest.mark.parametrize("args, needles", [
    (["-d", "fake-dig"], ["fake-dig", "Did you mean 'fake-diag'"]),
    (["-d", "fake-diag", "--set", "weights.x=1"], ["weights.x", "fake-diag"]),
    (["-d", "fake-diag", "--set", "fake-diag.nope=1"], ["nope"]),
])
def test_diagnose_bad_input(runner, fake, tmp_path, args, needles):
    out = tmp_path / "run"
    assert runner.invoke(cli, [*FAST, "--out", str(out)]).exit_code == 0
    one_line_error(runner.invoke(cli, ["diagnose", str(out), *args]), *needles)
    assert not (out / "diagnostics.json").exists()


def test_diagnose_needs_a_finished_run(runner, fake, tmp_path):
    one_line_error(runner.invoke(cli, ["diagnose", str(tmp_path)]), "config.toml", "does not exist")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# the built-in plugins, where they are installed


def test_builtin_names(runner):
    if not registered("target", "gmm40", "gaussian", "funnel"):
        pytest.skip("the targets plugin is not installed yet")
    result = runner.invoke(cli, ["list", "targets"])
    assert result.exit_code == 0
    for name in ("gmm40", "gaussian", "funnel", "many-well-54", "many-well-32"):
        assert name in result.output
    result = runner.invoke(cli, ["show", "process", "vp"])
    assert result.exit_code == 0 and "beta_max" in result.output
    one_line_error(runner.invoke(cli, ["sample", "gmm4", "--dry-run"]), "Did you mean 'gmm40'")


def test_builtin_default_config(runner):
    """The default job: an unnormalised target with a known log Z, and a sampler given
    neither an exact score nor the target's mixture form."""
    if not (registered("target", "gmm40") and registered("sampler", "smc", "reverse-sde")):
        pytest.skip("the targets / samplers / montecarlo plugins are not installed yet")
    result = runner.invoke(cli, ["sample", "--dry-run"])
    assert result.exit_code == 0, result.output
    config = tomllib.loads(result.stdout)
    assert config["n"] == config_module.DEFAULT_JOB["n"] and config["seed"] == 0
    assert config["target"]["name"] == "gmm40"
    assert sdekit.create("target", "gmm40").log_Z is not None
    assert config["sampler"] == {**config["sampler"], "name": "smc", "sigma": 20.0}
    assert set(config) == {"seed", "n", "target", "sampler"}  # no score at all
    # a target named on the command line keeps the general defaults
    config = tomllib.loads(runner.invoke(cli, ["sample", "gmm40", "--dry-run"]).stdout)
    assert config["n"] == config_module.DEFAULTS["n"]
    assert config["sampler"]["name"] == config_module.DEFAULTS["sampler"]["name"]


def test_seed_decides_the_controller_seed(runner):
    if not registered("sampler", "pis"):
        pytest.skip("the samplers plugin is not installed yet")
    seeds = {}
    for seed in ("7", "8"):
        result = runner.invoke(cli, ["sample", "funnel", "--sampler", "pis", "--seed", seed,
                                     "--dry-run"])
        assert result.exit_code == 0, result.output
        seeds[seed] = tomllib.loads(result.stdout)["controller"]["seed"]
    assert seeds == {s: sdekit.derive_seed(int(s), "controller") for s in ("7", "8")}
    result = runner.invoke(cli, ["sample", "funnel", "--sampler", "pis", "--seed", "7",
                                 "--set", "controller.seed=0", "--dry-run"])
    assert tomllib.loads(result.stdout)["controller"]["seed"] == 0


def test_builtin_round_trip(runner, tmp_path, monkeypatch):
    if not (registered("target", "gaussian") and registered("sampler", "reverse-sde")):
        pytest.skip("the targets / samplers plugins are not installed yet")
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ())  # fast; the script test runs them
    a, b = tmp_path / "a", tmp_path / "b"
    result = runner.invoke(cli, ["sample", "gaussian", "-n", "100", "--steps", "10",
                                 "--process", "ve", "--out", str(a)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["sample", "--config", str(a / "config.toml"), "--out", str(b)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(sio.load_npz(a / "samples.npz")["x"],
                                  sio.load_npz(b / "samples.npz")["x"])


def test_installed_script(tmp_path):
    """One real run of the console script, in a fresh process."""
    if not (registered("target", "gaussian") and registered("sampler", "reverse-sde")):
        pytest.skip("the targets / samplers plugins are not installed yet")
    script = Path(sys.executable).with_name("sdekit")
    script = str(script) if script.exists() else shutil.which("sdekit")
    if script is None:
        pytest.skip("the sdekit script is not installed")
    out = tmp_path / "run"
    proc = subprocess.run(
        [script, "sample", "gaussian", "-n", "300", "--steps", "20", "--seed", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(run_module.OUTPUT_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 300 and metrics["n_nonfinite"] == 0
    if registered("diagnostic", "weights"):
        assert "log_Z" in metrics and "ess" in metrics
    assert sio.load_npz(out / "samples.npz")["x"].shape == (300, 2)


PIS_RUN = ["sample", "gaussian", "--sampler", "pis", "--steps", "8", "--batch", "16",
           "-n", "64", "--seed", "3", "--set", "controller.width=8", "--train-iters", "1000"]


def _script() -> str:
    script = Path(sys.executable).with_name("sdekit")
    script = str(script) if script.exists() else shutil.which("sdekit")
    if script is None:
        pytest.skip("the sdekit script is not installed")
    return script


def _trained_steps(run: Path) -> int:
    cfg = sdekit.resolve_config(sdekit.load_config(run / "config.toml"))
    return sdekit.load_checkpoint(run_module.compose_config(cfg)[0], run / "checkpoint.eqx")[1]


@pytest.mark.slow
def test_killed_training_resumes_and_diagnose_reloads_the_checkpoint(runner, tmp_path, monkeypatch):
    """Kill the installed script after its first checkpoint and `--resume` the run (that
    the result is bit for bit the uninterrupted run's, tests/test_faults.py shows);
    `diagnose` then reloads the trained sampler from the checkpoint, and refuses a partial
    or a mismatched one."""
    if not registered("sampler", "pis"):
        pytest.skip("the samplers plugin is not installed yet")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([_script(), *PIS_RUN, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.eqx").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    assert 0 < (partial_steps := _trained_steps(killed)) < 1000
    # (and, if the kill landed inside a checkpoint's write, its hidden temporary file)
    shown = sorted(p.name for p in killed.iterdir() if not p.name.startswith("."))
    assert shown == ["checkpoint.eqx", "config.toml"]
    partial = tmp_path / "partial"
    shutil.copytree(killed, partial)

    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights", "eubo"))
    result = runner.invoke(cli, ["sample", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert _trained_steps(killed) == 1000

    result = runner.invoke(cli, ["diagnose", str(killed), "-d", "weights", "-d", "eubo"])
    assert result.exit_code == 0, result.output
    found = json.loads((killed / "diagnostics.json").read_text())
    metrics = json.loads((killed / "metrics.json").read_text())
    assert found["eubo"]["eubo"] == metrics["eubo"]
    assert found["weights"]["log_Z"] == metrics["log_Z"]

    shutil.copy(killed / "samples.npz", partial)
    one_line_error(runner.invoke(cli, ["diagnose", str(partial)]),
                   f"{partial_steps} of 1000 training steps", "--resume")
    config = (killed / "config.toml").read_text().replace("train_iters = 1000", "train_iters = 900")
    (killed / "config.toml").write_text(config)
    one_line_error(runner.invoke(cli, ["diagnose", str(killed)]),
                   "not a checkpoint of this model", "train_iters")


# --------------------------------------------------------------------------------------
# fuzzing the command line and the configuration parser


#: What a user might type after each option, well-formed or not.
VALUES = ["fake-gauss", "fake-gaus", "gmm40", "fake-sampler", "fake-plain", "fake-process",
          "fake-score", "nope", "0", "-1", "3", "64", "2.5", "1e3", "abc", "", " ", "=", "é",
          "sampler.steps=2", "sampler.scale=x", "sampler.scale=0.5", "target.dim=3",
          "target.dim=[1, 2]", "process.sigma=-1", "score.strength=2", "sampler.", "a.b=1",
          "sampler.steps", "weights.x=1", "target.name=x", "sampler.nonfinite=3",
          "sampler.weights=false", "\x00"]
OPTIONS = ["--sampler", "--process", "--score", "--controller", "--steps", "--batch",
           "--train-iters", "-n", "--seed", "--set", "--config", "--resume"]
COMMAND_LINES = st.lists(st.one_of(
    st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)),  # mostly option + value
    st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)),
    st.tuples(st.sampled_from([*VALUES, "--dry-run", *OPTIONS])),  # or a stray token
), max_size=6).map(lambda chunks: [t for chunk in chunks for t in chunk])
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fake_defaults(monkeypatch) -> None:
    """The defaults and the default job, on the fake plugin."""
    fake = {"n": 32, "target": {"name": "fake-gauss"}, "sampler": {"name": "fake-sampler"}}
    monkeypatch.setattr(config_module, "DEFAULTS", {"seed": 0, **fake})
    monkeypatch.setattr(config_module, "DEFAULT_JOB", fake)


def _check_outcome(result, out: Path) -> None:
    """Success with every output file, or one clean error line and no output directory."""
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 0:
        if out.exists():  # not a --dry-run
            assert sorted(p.name for p in out.iterdir()) == sorted(run_module.OUTPUT_FILES)
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert not out.exists()


@FUZZ
@given(COMMAND_LINES)
def test_fuzzed_command_lines(runner, fake, tmp_path, monkeypatch, tokens):
    _fake_defaults(monkeypatch)
    out = tmp_path / f"run-{abs(hash(tuple(tokens)))}"
    args = ["sample", *tokens]
    if "--out" not in tokens and "-o" not in tokens:
        args += ["--out", str(out)]
    _check_outcome(runner.invoke(cli, args), out)


SECTION_NAMES = {"target": ["fake-gauss", "nope"], "sampler": ["fake-sampler", "fake-plain"],
                 "process": ["fake-process"], "score": ["fake-score"], "controller": ["x"],
                 "weird": ["x"]}
TOML_VALUES = st.one_of(st.integers(-3, 70), st.floats(-3, 3), st.booleans(),
                        st.sampled_from(["a", "", "fake-gauss"]), st.lists(st.integers(0, 3), max_size=3))
SECTIONS_TOML = st.fixed_dictionaries({}, optional={
    section: st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(names), "dim": TOML_VALUES, "steps": TOML_VALUES,
        "scale": TOML_VALUES, "sigma": TOML_VALUES, "strength": TOML_VALUES, "bogus": TOML_VALUES,
    }) for section, names in SECTION_NAMES.items()
} | {"seed": TOML_VALUES, "n": TOML_VALUES, "extra": TOML_VALUES})
#: Mostly valid TOML describing odd configurations; some text that is not TOML at all.
CONFIG_TEXT = st.one_of(
    SECTIONS_TOML.map(sio.toml_dumps), SECTIONS_TOML.map(sio.toml_dumps), st.text(max_size=100)
)


@FUZZ
@given(CONFIG_TEXT)
def test_fuzzed_config_files(runner, fake, tmp_path, monkeypatch, text):
    _fake_defaults(monkeypatch)
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / f"run-{abs(hash(text))}"
    _check_outcome(runner.invoke(cli, ["sample", "--config", str(config), "--out", str(out)]), out)
