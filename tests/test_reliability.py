"""Reliability: no run hangs, a run that produced nothing usable fails, honest weights
metrics, failures that name their cause and fix, bounded diagnostics."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from click.testing import CliRunner

import sdekit
from sdekit import _run as run_module
from sdekit._xla import CPU_FLAGS, configure_xla
from sdekit.cli import cli

# The program that deadlocked XLA's concurrency-optimised CPU scheduler on every run
# (docs/performance.md, "A run that hangs"): it must finish now that sdekit turns it off.
_HANG = textwrap.dedent("""
    import itertools, os, jax, sdekit
    means = [[2.0 * s for s in signs] for signs in itertools.product([-1, 1], repeat=5)]
    gmm = sdekit.create("target", "gmm", means=means, covs=1 / 32)
    s = sdekit.compose(gmm, {"name": "follmer", "steps": 4, "draws": 129, "chunk": 128},
                       process={"name": "pbm", "sigma": 1.0})
    jax.block_until_ready(s.sample(jax.random.key(0), 300))
    print(os.environ["XLA_FLAGS"])
""")


def test_xla_cpu_deadlock_reproducer_finishes():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
        done = subprocess.run([sys.executable, "-c", _HANG], env=env, capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError("the XLA CPU deadlock reproducer did not finish in 240 s") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == list(CPU_FLAGS)


def test_configure_xla_appends_and_keeps_the_users_flags():
    jax.devices()  # the backend has started: flags added now come too late, and it says so
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with pytest.warns(RuntimeWarning, match="Import sdekit first"):
        assert configure_xla(env) == list(CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *CPU_FLAGS]
    assert configure_xla(env) == []  # idempotent
    user = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert configure_xla(user) == []
    assert user["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    empty: dict[str, str] = {}
    with pytest.warns(RuntimeWarning):
        configure_xla(empty)
    assert empty["XLA_FLAGS"].split() == list(CPU_FLAGS)


# --------------------------------------------------------------------------------------
# A run that produced nothing usable fails


class _Bad(sdekit.AbstractSampler):
    """Standard-normal samples of which the first `nan_rows` are NaN, with log-weights
    `tilt * sum(x)` of which the first `nan_weights` are NaN."""

    target: sdekit.AbstractTarget
    nan_rows: int = eqx.field(static=True)
    nan_weights: int = eqx.field(static=True)
    tilt: float

    def sample(self, key, n):
        x = jax.random.normal(key, (n, self.target.dim)).at[: self.nan_rows].set(jnp.nan)
        lw = (self.tilt * jnp.sum(x, axis=1)).at[: self.nan_weights].set(jnp.nan)
        return sdekit.Samples(x, lw)


def _bad(target, nan_rows: int = 0, nan_weights: int = 0, tilt: float = 0.1) -> _Bad:
    """A test sampler with non-finite samples or log-weights, or heavy-tailed weights."""
    return _Bad(sdekit.resolve_part("target", target), nan_rows, nan_weights, tilt)


class _BadPlugin:
    @sdekit.hookimpl
    def register_samplers(self, register):
        register("test-bad", _bad)


@pytest.fixture
def bad_sampler(monkeypatch):
    sdekit.register_plugin(_BadPlugin(), "sdekit-test-bad")
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights",))
    yield
    sdekit.unregister_plugin("sdekit-test-bad")


def _sample(tmp_path, *sets, n=40):
    out = tmp_path / "out"
    args = ["sample", "gaussian", "--sampler", "test-bad", "-n", str(n), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *(a for s in sets for a in ("--set", s))])
    return result, out


def test_a_run_of_mostly_nan_samples_fails_and_is_marked_failed(bad_sampler, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"an earlier run's samples")
    result, out = _sample(tmp_path, "sampler.nan_rows=21")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "21 of 40 samples are not finite" in errors[0] and "--steps" in errors[0]
    assert "JAX_ENABLE_X64=1" in errors[0] and "marks the run failed" in errors[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "21 of 40 samples" in metrics["error"]
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "metrics.json"]
    with pytest.raises(sdekit.ConfigError, match="failed and has no samples: 21 of 40"):
        sdekit.load_run(out)


def test_a_run_of_a_few_nan_samples_warns_and_succeeds(bad_sampler, tmp_path):
    result, out = _sample(tmp_path, "sampler.nan_rows=20")  # exactly half: not more
    assert result.exit_code == 0, result.output
    assert "20 of 40 samples are not finite" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


def test_mostly_nan_log_weights_fail_naming_the_target_or_the_weights(bad_sampler):
    config = {"target": "gaussian", "sampler": {"name": "test-bad", "nan_weights": 30}, "n": 40}
    with pytest.raises(sdekit.RunFailed, match="30 of 40 log-weights are not finite, though "
                       "the target's log-density is finite") as info:
        sdekit.run(config)
    assert info.value.run.metrics["status"] == "failed" and info.value.run.samples.x.shape == (40, 2)
    # a log-density that is NaN in float32 but finite in float64 at the samples
    target = sdekit.target_from_log_prob(_float32_nan, dim=2, check=False)
    x = jax.random.normal(jax.random.key(0), (40, 2))
    message = run_module._failure(None, target, sdekit.Samples(x, jax.vmap(target.log_prob)(x)))
    assert re.fullmatch(r"40 of 40 log-weights are not finite: the target's log-density is nan "
                        r"at 40 of the samples, e\.g\. x = \[.*\]; it is finite there in "
                        r"float64, so float32 is the likely cause: run with JAX_ENABLE_X64=1",
                        message), message


def _float32_nan(x):
    """log N(x; 0, I) + log(0.5), with the 0.5 computed so that float32 makes it log(-0.5)."""
    return -0.5 * x @ x + jnp.log(((jnp.ones(()) + 1e-9) - 1.0) * 1e9 - 0.5)


# --------------------------------------------------------------------------------------
# Honest weights metrics


def test_untrustworthy_weights_warn_and_good_ones_do_not(bad_sampler, tmp_path):
    # log-weights tilt * sum(x), x ~ N(0, I_2): lognormal weights, log-sd tilt * sqrt(2)
    result, out = _sample(tmp_path, "sampler.tilt=4.0", n=400)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ess"] < 0.01 and metrics["pareto_k"] > 0.7
    assert [w.split(":")[0] for w in metrics["warnings"]] == ["ess = %.3g < 0.01" % metrics["ess"],
                                                               "pareto_k = %.2f > 0.7" % metrics["pareto_k"]]
    assert all(w.endswith("log_Z and weighted estimates are not to be trusted")
               for w in metrics["warnings"])
    assert result.stderr.count("not to be trusted") == 2
    result, out = _sample(tmp_path, "sampler.tilt=0.1", n=400)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ess"] > 0.9 and metrics["pareto_k"] < 0.5 and "warnings" not in metrics
    assert "not to be trusted" not in result.stderr


# --------------------------------------------------------------------------------------
# Failures name their cause and fix, in one line without doubled punctuation

#: Two full stops that are not an ellipsis or a relative path, or a stop beside a comma,
#: semicolon or colon (not a number's, as numpy prints `[0., 1.]`).
_DOUBLED = re.compile(r"(?<![.\w])\.\.(?![./\w])|\w\.\.(?![./\w])|[,;:]\s*\.(?![./\w])|(?<![\d.])\.\s*[,;]")

_USER_CODE = textwrap.dedent('''
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def nan_density(x):
        return jnp.log(x[0] - 100.0)

    def raising_density(x):
        raise ValueError("this density cannot be evaluated.")

    def failing_model():
        numpyro.sample("s", dist.Normal(0, 1))
        raise ValueError("bad rate parameter.")

    def float32_model(y=jnp.ones(3)):
        # a rate of 0.5 in float64 that float32 rounds to -0.5
        s = numpyro.sample("s", dist.Normal(0, 1))
        rate = ((jnp.ones(()) + 1e-9 - 1.0) * 1e9 - 0.5) * jnp.exp(s)
        numpyro.sample("y", dist.Poisson(rate, validate_args=True), obs=y)
''')


def _bad_inputs(tmp_path):
    code = tmp_path / "user.py"
    code.write_text(_USER_CODE)
    return {
        "unknown target": ["sample", "no-such-target"],
        "unknown option": ["sample", "gaussian", "--set", "sampler.no_such_option=1"],
        "bad value": ["sample", "gaussian", "--set", "target.scale=-1.0"],
        "bad steps": ["sample", "gaussian", "--steps", "0"],
        "unknown sampler": ["show", "sampler", "no-such-sampler"],
        "not a run": ["diagnose", str(tmp_path)],
        "nan density": ["sample", f"{code}:nan_density", "--set", "target.dim=2"],
        "raising density": ["sample", f"{code}:raising_density", "--set", "target.dim=2"],
        "failing model": ["sample", f"numpyro:{code}:failing_model"],
        "float32 model": ["sample", f"numpyro:{code}:float32_model"],
    }


def test_bad_inputs_give_one_line_without_doubled_punctuation(tmp_path):
    runner = CliRunner()
    errors = {}
    for what, args in _bad_inputs(tmp_path).items():
        result = runner.invoke(cli, args)
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert result.exit_code != 0 and len(lines) == 1, (what, result.output)
        assert "Traceback" not in result.output, what
        errors[what] = lines[0]
    for what, line in errors.items():
        assert not _DOUBLED.search(line), (what, line)
    assert "float32 is the likely cause" in errors["float32 model"]
    assert "JAX_ENABLE_X64=1" in errors["float32 model"]
    assert "bad rate parameter" in errors["failing model"]
    assert "JAX_ENABLE_X64" not in errors["failing model"]
    assert "x = [0., 0.]" in errors["nan density"]


def test_raise_sites_have_no_doubled_punctuation():
    """The literal text of every `raise ...(...)` message in the core and the plugins."""
    root = Path(sdekit.__file__).parent.parent
    found = []
    for path in [*root.joinpath("sdekit").rglob("*.py"), *root.joinpath("plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            for arg in node.exc.args:
                text = "".join(
                    part.value if isinstance(part, ast.Constant) and isinstance(part.value, str)
                    else "{}" for part in (arg.values if isinstance(arg, ast.JoinedStr) else [arg]))
                if _DOUBLED.search(text) or text.rstrip().endswith((",.", ";.", ":.")):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------------------
# The diagnostics' time budget


class _Slow(sdekit.AbstractDiagnostic):
    """Sleeps 0.2 s; its cost is `declared` seconds (a string: a broken cost)."""

    declared: float | str = 0.0

    def cost(self, run_seconds, *, target=None, sampler=None, samples=None):
        assert set(run_seconds) == {"train_seconds", "compile_seconds", "sample_seconds"}
        return float(self.declared)

    def __call__(self, key, *, target=None, sampler=None, samples=None):
        time.sleep(0.2)
        return {"slept": 0.2}


class _SlowPlugin:
    @sdekit.hookimpl
    def register_diagnostics(self, register):
        register("test-slow", _Slow)


@pytest.fixture
def slow_diagnostic(bad_sampler, monkeypatch):
    sdekit.register_plugin(_SlowPlugin(), "sdekit-test-slow")
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("test-slow", "weights"))
    yield
    sdekit.unregister_plugin("sdekit-test-slow")


@pytest.mark.parametrize("factor, skipped", [
    ("inf", []),
    # a run of 40 samples takes well under 20 s, so 0.01 of it is under 0.2 s: the slow
    # diagnostic starts (nothing was spent yet) and overruns it, and weights is skipped
    ("0.01", ["weights"]),
    ("0", ["test-slow", "weights"]),
])
def test_diagnostics_beyond_the_time_budget_are_skipped_and_listed(slow_diagnostic, tmp_path,
                                                                  factor, skipped):
    out = tmp_path / "out"
    args = ["sample", "gaussian", "--sampler", "test-bad", "-n", "40", "--out", str(out),
            "--diagnostic-budget", factor]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.get("diagnostics_skipped", []) == skipped
    assert ("slept" in metrics) == ("test-slow" not in skipped)
    assert ("log_Z" in metrics) == ("weights" not in skipped)
    shown = [" ".join(line.split()) for line in result.stdout.splitlines()
             if line.startswith("skipped")]
    assert shown == ([f"skipped {', '.join(skipped)} (they would overrun the diagnostics' time "
                      f"budget; sdekit diagnose computes them)"] if skipped else [])
    if skipped:  # and sdekit diagnose computes them
        assert set(sdekit.diagnose(sdekit.load_run(out), skipped)) == set(skipped)


@pytest.mark.parametrize("declared, runs", [(1e9, False), (0.0, True), ("soon", True)])
def test_a_diagnostic_whose_cost_would_overrun_the_budget_is_not_started(
        slow_diagnostic, declared, runs):
    # a budget of 1000 times the run's own time fits 0.2 s, not a declared 1e9 s; a cost
    # that fails is said and taken as 0
    create = sdekit.create

    def with_cost(kind, name, **options):
        return _Slow(declared) if name == "test-slow" else create(kind, name, **options)

    with pytest.MonkeyPatch.context() as m, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.setattr(run_module, "create", with_cost)
        metrics = sdekit.run({"target": "gaussian", "sampler": "test-bad", "n": 40},
                             diagnostic_budget=1000.0).metrics
    assert ("slept" in metrics) == runs and "log_Z" in metrics
    assert metrics.get("diagnostics_skipped", []) == ([] if runs else ["test-slow"])
    said = [str(w.message) for w in caught if "its cost failed" in str(w.message)]
    assert said == ([] if declared != "soon" else [
        "diagnostic 'test-slow': its cost failed (ValueError: could not convert string to "
        "float: 'soon'); it is run as if its cost were 0"])


def test_a_bad_diagnostic_budget_is_refused_before_any_work(monkeypatch):
    monkeypatch.setenv("SDEKIT_DIAGNOSTIC_BUDGET", "soon")
    with pytest.raises(sdekit.ConfigError, match="SDEKIT_DIAGNOSTIC_BUDGET='soon' is not a "
                                                 "number; expected a factor >= 0"):
        sdekit.run({"target": "gaussian", "sampler": "no-such-sampler"})
    with pytest.raises(sdekit.ConfigError, match=r"diagnostic_budget=-1\.0: expected a factor"):
        sdekit.run({"target": "gaussian"}, diagnostic_budget=-1.0)


# --------------------------------------------------------------------------------------
# Phases and the watchdog


def test_the_progress_display_names_each_phase(bad_sampler, tmp_path):
    result, _ = _sample(tmp_path)
    assert result.exit_code == 0, result.output
    done = [re.fullmatch(r"([a-z ]+): [0-9.e+-]+ s(, [0-9.e+-]+ samples/s)?", line)
            for line in result.stderr.splitlines()]
    shown = [(m[1], m[2] is not None) for m in done if m]
    assert shown == [("compile", False), ("sample", True), ("diagnose weights", False)], result.stderr


@pytest.mark.parametrize("sampler, phases", [
    # sampling: 25 draws of the Monte-Carlo score per step, about 5 s of sleeping
    (["reverse-sde", "--score", "mc-score", "--steps", "2", "--set", "score.draws=25",
      "--set", "score.chunk=25"], "compile|sample"),
    # training: one chunk of 20 steps, 3 states of 2 paths each, about 12 s of sleeping
    (["pis", "--steps", "2", "--batch", "2", "--train-iters", "20"], "train"),
])
def test_the_watchdog_ends_a_phase_that_makes_no_progress(tmp_path, sampler, phases):
    # a target whose log-density sleeps 0.1 s on the host
    code = tmp_path / "slow.py"
    code.write_text(textwrap.dedent("""
        import time, jax, jax.numpy as jnp

        def _sleep(x):
            time.sleep(0.1)
            return x

        @jax.custom_jvp
        def _slow_identity(v):
            out = jax.ShapeDtypeStruct((), v.dtype)
            return jax.pure_callback(_sleep, out, v, vmap_method="sequential")

        @_slow_identity.defjvp
        def _(primals, tangents):
            return _slow_identity(primals[0]), tangents[0]

        def slow(x):
            return -0.5 * _slow_identity(x @ x)
    """))
    args = ["-m", "sdekit", "sample", f"{code}:slow", "--set", "target.dim=1", "-n", "1",
            "--watchdog", "1", "--out", str(tmp_path / "out"), "--sampler", *sampler]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    # compiling may itself take over a second on a loaded machine: either phase is ended
    assert len(errors) == 1 and re.fullmatch(
        rf"Error: the ({phases}) phase made no progress for 1 s \(the watchdog limit\): "
        r"stopped\. If it only needs longer, raise --watchdog; if the process sat at 0% CPU, "
        r"see 'A run that hangs' in docs/performance\.md", errors[0]), done.stderr
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_a_run_killed_while_writing_is_never_taken_for_a_result(bad_sampler, tmp_path,
                                                                 monkeypatch):
    config = {"target": "gaussian", "sampler": "test-bad", "n": 40}
    out = tmp_path / "out"
    first = sdekit.run(config, out=out)
    real = sdekit.io.atomic_write

    def killed_after_the_samples(path, data):
        real(path, data)
        if Path(path).name == "samples.npz":
            raise SystemExit("killed")  # what SIGKILL leaves: the files written so far

    monkeypatch.setattr(sdekit.io, "atomic_write", killed_after_the_samples)
    with pytest.raises(SystemExit):
        sdekit.run({**config, "seed": 1}, out=out)
    assert not (out / "metrics.json").exists()  # the old run's metrics are gone first
    with pytest.raises(sdekit.ConfigError, match="metrics.json does not exist"):
        sdekit.load_run(out)
    monkeypatch.setattr(sdekit.io, "atomic_write", real)
    again = sdekit.run(config, out=out)
    assert sdekit.load_run(out).metrics == again.metrics
    assert again.metrics["log_Z"] == first.metrics["log_Z"]
