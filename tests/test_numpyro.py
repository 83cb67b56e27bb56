"""NumPyro models and Python log-densities as targets, target specs, ArviZ output.

Statistical checks are against ground truth: the analytic evidence and posterior of a
Beta–Bernoulli model, and a stored long NUTS run for eight schools
(`benchmarks/eight_schools_reference.py`). The sampler is tempered SMC (`smc`, no
training), run several times independently: the spread of the runs gives the standard
errors the tolerances are made of.
"""

import json
import sys
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from click.testing import CliRunner
from scipy.special import betaln

import sdekit
from sdekit.cli import cli
from sdekit_numpyro import NumPyroTarget, logistic_breast_cancer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NUTS_REFERENCE = ROOT / "plugins" / "sdekit_numpyro" / "data" / "eight_schools_nuts.json"
sys.path.insert(0, str(EXAMPLES))

from eight_schools import data as eight_schools_data  # noqa: E402
from eight_schools import noncentered  # noqa: E402


def weighted_mean_se(log_w, f):
    """Self-normalised importance-sampling mean of `f` and its delta-method standard error."""
    p = np.exp(log_w - np.max(log_w))
    p /= p.sum()
    mean = p @ f
    return mean, np.sqrt(np.sum(p**2 * (f - mean) ** 2))


# --------------------------------------------------------------------------------------
# a conjugate model: Beta-Bernoulli (a constrained site, so the Jacobian term matters)

A, B = 2.0, 3.0
Y = np.array([1.0] * 14 + [0.0] * 6)


def beta_bernoulli(y):
    p = numpyro.sample("p", dist.Beta(A, B))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


def test_log_prob_is_the_joint_density_with_its_jacobian():
    target = NumPyroTarget(beta_bernoulli, (Y,))
    assert target.dim == 1 and target.site_names == ("p",)
    z = jnp.array([-1.3, 0.0, 0.4, 2.5])
    p = jax.nn.sigmoid(z)
    k, n = Y.sum(), len(Y)
    expected = (dist.Beta(A, B).log_prob(p) + k * jnp.log(p) + (n - k) * jnp.log1p(-p)
                + jnp.log(p) + jnp.log1p(-p))  # + log |dp/dz|
    np.testing.assert_allclose(jax.vmap(target.log_prob)(z[:, None]), expected, rtol=1e-5)
    np.testing.assert_allclose(target.sites(z[:, None])["p"], p, rtol=1e-6)
    np.testing.assert_allclose(target.unconstrain({"p": p})[:, 0], z, atol=1e-5)


def smc_runs(target, runs: int, n: int, **options):
    """`runs` independent tempered-SMC runs (the `smc` sampler of the montecarlo plugin):
    their spread gives honest standard errors."""
    sampler = sdekit.compose(target, {"name": "smc", **options})
    return [sampler.sample(jax.random.PRNGKey(r), n) for r in range(runs)]


def mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


@pytest.fixture(scope="module")
def beta_bernoulli_runs():
    target = NumPyroTarget(beta_bernoulli, (Y,))
    return target, smc_runs(target, 16, 1000, steps=30, sigma=1.0)


def test_conjugate_log_evidence(beta_bernoulli_runs):
    _, runs = beta_bernoulli_runs
    k, n = Y.sum(), len(Y)
    exact = betaln(A + k, B + n - k) - betaln(A, B)
    # each run's Z-hat is unbiased for Z; the mean over runs too, with its standard error
    log_Z = np.array([float(r.log_weights[0]) for r in runs])
    Z_mean, Z_se = mean_se(np.exp(log_Z - exact))
    estimate, se = exact + np.log(Z_mean), Z_se / Z_mean
    assert se < 0.02, f"standard error {se} too large for a meaningful test"
    assert abs(estimate - exact) < 3 * se, (estimate, exact, se)


def test_conjugate_posterior_mean_and_variance(beta_bernoulli_runs):
    target, runs = beta_bernoulli_runs
    a, b = A + Y.sum(), B + len(Y) - Y.sum()
    p = [np.asarray(target.sites(r.x)["p"], dtype=np.float64) for r in runs]
    m, se_m = mean_se([q.mean() for q in p])
    v, se_v = mean_se([q.var() for q in p])
    assert abs(m - a / (a + b)) < 4 * se_m, (m, a / (a + b), se_m)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(v - var) < 4 * se_v, (v, var, se_v)


def test_to_arviz():
    target = NumPyroTarget(beta_bernoulli, (Y,))
    z = jax.random.normal(jax.random.PRNGKey(0), (10_000, 1))  # importance sampling, N(0, 1)
    log_w = jax.jit(jax.vmap(target.log_prob))(z) + 0.5 * z[:, 0] ** 2 + 0.5 * np.log(2 * np.pi)
    samples = sdekit.Samples(z, log_w)
    idata = sdekit.to_arviz(samples, target)
    assert idata.posterior["p"].shape == (1, 10_000)
    np.testing.assert_allclose(idata.sample_stats["log_weights"].values[0], log_w)
    assert idata.attrs["log_Z"] == pytest.approx(float(sdekit.log_Z_estimate(log_w)))
    resampled = sdekit.to_arviz(samples, target, key=jax.random.PRNGKey(3))
    a, b = A + Y.sum(), B + len(Y) - Y.sum()
    p = np.asarray(idata.posterior["p"].values[0], dtype=np.float64)
    _, se = weighted_mean_se(np.asarray(log_w, dtype=np.float64), p)
    # equally weighted draws after resampling: their plain mean estimates the posterior mean
    # (resampling adds at most the variance of the draws, hence the sqrt(2))
    assert abs(float(resampled.posterior["p"].mean()) - a / (a + b)) < 4 * np.sqrt(2) * se


# --------------------------------------------------------------------------------------
# eight schools against NUTS


def test_eight_schools_matches_nuts():
    reference = json.loads(NUTS_REFERENCE.read_text())["sites"]
    target = NumPyroTarget(noncentered, model_kwargs=eight_schools_data)
    assert target.site_names == ("mu", "tau", "theta_tilde") and target.dim == 10
    runs = smc_runs(target, 8, 2000, steps=100, sigma=3.0)
    sites = [target.sites(r.x) for r in runs]
    assert sites[0]["theta"].shape == (2000, 8)  # the deterministic site too
    for name in ("mu", "tau"):
        m, se = mean_se([np.mean(s[name]) for s in sites])
        ref = reference[name]
        assert se < 0.1, f"{name}: standard error {se} too large for a meaningful test"
        assert abs(m - ref["mean"]) < 4 * np.hypot(se, ref["mcse"]), (name, m, ref, se)


# --------------------------------------------------------------------------------------
# log-densities and pytree positions


def test_pytree_positions_round_trip():
    def log_prob(params):
        return -0.5 * (params["mu"] ** 2 + jnp.sum((params["z"] - 1.0) ** 2))

    target = sdekit.target_from_log_prob(log_prob, example={"mu": 0.0, "z": jnp.zeros(3)})
    assert target.dim == 4
    x = jnp.array([[0.5, 1.0, 2.0, 3.0]])
    assert float(target.log_prob(x[0])) == pytest.approx(-0.5 * (0.25 + 0 + 1 + 4))
    sites = target.sites(x)
    np.testing.assert_allclose(sites["mu"], [0.5])
    np.testing.assert_allclose(sites["z"], [[1.0, 2.0, 3.0]])
    idata = sdekit.to_arviz(sdekit.Samples(x), target)
    assert set(idata.posterior.data_vars) == {"mu", "z"}
    assert "sample_stats" not in idata.groups()


def test_log_density_returning_a_vector_is_an_error():
    with pytest.raises(sdekit.TargetError, match=r"shape \(3,\).*expected a scalar"):
        sdekit.target_from_log_prob(lambda x: -0.5 * x**2, dim=3)


def test_log_density_that_rejects_the_declared_dimension_is_an_error():
    weights = jnp.ones(2)

    def log_prob(x):
        return -0.5 * (x @ weights) ** 2

    with pytest.raises(sdekit.TargetError, match=r"'.*log_prob' \(dim=3\).*shape \(3,\)"):
        sdekit.target_from_log_prob(log_prob, dim=3)


def test_log_density_needs_a_dimension():
    with pytest.raises(sdekit.TargetError, match="dim=|example="):
        sdekit.target_from_log_prob(lambda x: -x @ x)
    with pytest.raises(sdekit.TargetError, match="disagrees"):
        sdekit.target_from_log_prob(lambda p: -p["a"] ** 2, dim=2, example={"a": 0.0})


def test_discrete_latent_site_is_an_error():
    def mixture(y):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(3.0 * z, 1.0), obs=y)

    with pytest.raises(sdekit.TargetError, match=r"discrete latent site.*'z'"):
        NumPyroTarget(mixture, (1.0,))


# --------------------------------------------------------------------------------------
# target specs


USER_FILE = '''
import jax.numpy as jnp
import sdekit

def log_prob(x, scale=1.0):
    return -0.5 * jnp.sum((x / scale) ** 2)

def two_points(x, y):
    return -x @ y

def wrong_dim(x):
    return -0.5 * (x @ jnp.ones(2)) ** 2

def make(dim=3, scale=2.0):
    return sdekit.target_from_log_prob(lambda x: log_prob(x, scale), dim=dim)

fixed = sdekit.target_from_log_prob(log_prob, dim=2)
not_a_target = 3
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_target.py"
    path.write_text(USER_FILE)
    return path


def test_specs_from_a_file(user_file):
    target = sdekit.resolve_target(f"{user_file}:log_prob", dim=4, scale=2.0)
    assert target.dim == 4
    assert float(target.log_prob(jnp.full(4, 2.0))) == pytest.approx(-2.0)
    assert sdekit.resolve_target(f"{user_file}:make").dim == 3
    assert sdekit.resolve_target(f"{user_file}:make", dim=5).dim == 5
    assert sdekit.resolve_target(f"{user_file}:fixed").dim == 2
    assert sdekit.resolve_target("funnel", dim=4).dim == 4


def test_spec_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_module.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = sdekit.resolve_target("my_user_module:log_prob", dim=2)
    assert float(target.log_prob(jnp.ones(2))) == pytest.approx(-1.0)


@pytest.mark.parametrize("name, options, match", [
    ("log_prob", {}, "give its dimension as the option dim"),
    ("log_prob", {"dim": 2, "bogus": 1}, "no option 'bogus'"),
    ("two_points", {"dim": 2}, "2 required positional parameters"),
    ("wrong_dim", {"dim": 3}, r"shape \(3,\)"),
    ("not_a_target", {}, "names a int"),
    ("fixed", {"dim": 3}, "takes no options"),
    ("nothing_here", {}, "has no 'nothing_here'; it defines"),
])
def test_bad_specs(user_file, name, options, match):
    with pytest.raises(sdekit.SdekitError, match=match):
        sdekit.resolve_target(f"{user_file}:{name}", **options)


def test_missing_file_and_module():
    with pytest.raises(sdekit.TargetError, match="does not exist"):
        sdekit.resolve_target("no/such/file.py:log_prob", dim=2)
    with pytest.raises(sdekit.TargetError, match="no module named 'no_such_module_xyz'"):
        sdekit.resolve_target("no_such_module_xyz:log_prob", dim=2)


def cli_error(result) -> str:
    """The error of a failed command: one line (after the progress line, if it got that far)."""
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("sampling ")]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), \
        result.output
    return lines[0]


def test_cli_bad_specs(user_file):
    runner = CliRunner()
    assert "does not exist" in cli_error(runner.invoke(cli, ["sample", "nope/x.py:f", "--dry-run"]))
    assert "needs option 'dim'" in cli_error(
        runner.invoke(cli, ["sample", f"{user_file}:log_prob", "--dry-run"]))
    assert "(3,)" in cli_error(runner.invoke(
        cli, ["sample", f"{user_file}:wrong_dim", "--set", "target.dim=3", "--sampler", "pis",
              "--out", str(user_file.parent / "run")]))
    assert not (user_file.parent / "run").exists()


def test_cli_config_round_trip(user_file, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["sample", f"{user_file}:log_prob", "--set", "target.dim=3",
                                 "--set", "target.scale=0.5", "--sampler", "pis", "--dry-run"])
    assert result.exit_code == 0, result.output
    cfg = tomllib.loads(result.output)
    assert cfg["target"] == {"name": f"{user_file}:log_prob", "dim": 3, "scale": 0.5}
    config = tmp_path / "config.toml"
    config.write_text(result.output)
    again = runner.invoke(cli, ["sample", "--config", str(config), "--dry-run"])
    assert again.exit_code == 0 and again.output == result.output


class ImportanceSampler(sdekit.AbstractSampler):
    """Test-only: plain importance sampling from N(0, I)."""

    target: sdekit.AbstractTarget

    @eqx.filter_jit
    def sample(self, key, n):
        x = jax.random.normal(key, (n, self.target.dim))
        log_q = jax.vmap(lambda v: sdekit.gaussian_log_prob(v, 0.0, 1.0))(x)
        return sdekit.Samples(x, jax.vmap(self.target.log_prob)(x) - log_q)


class ImportancePlugin:
    @sdekit.hookimpl
    def register_samplers(self, register):
        register("test-importance", lambda target: ImportanceSampler(target))


def test_cli_numpyro_samples_npz_has_named_sites(tmp_path):
    sdekit.register_plugin(ImportancePlugin(), "test-importance-plugin")
    try:
        out = tmp_path / "run"
        spec = f"numpyro:{EXAMPLES / 'eight_schools.py'}:noncentered"
        result = CliRunner().invoke(cli, ["sample", spec, "--sampler", "test-importance",
                                          "-n", "500", "--out", str(out)])
        assert result.exit_code == 0, result.output
        with np.load(out / "samples.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        assert set(arrays) == {"x", "log_weights", "mu", "tau", "theta", "theta_tilde"}
        assert arrays["theta"].shape == (500, 8) and np.all(arrays["tau"] > 0)
        np.testing.assert_allclose(arrays["tau"], np.exp(arrays["x"][:, 1]), rtol=1e-5)
        config = tomllib.loads((out / "config.toml").read_text())
        assert config["target"] == {"name": spec}
        bad = CliRunner().invoke(cli, ["sample", f"numpyro:{EXAMPLES / 'banana.py'}:nope",
                                       "--sampler", "test-importance", "--dry-run"])
        assert "has no 'nope'" in cli_error(bad)
    finally:
        sdekit.unregister_plugin("test-importance-plugin")


MODEL_FILE = '''
import numpyro, numpyro.distributions as dist

def model(y, scale=1.0):
    mu = numpyro.sample("mu", dist.Normal(0.0, scale))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

model_data = {"y": 1.0}
data = {"y": 2.0, "scale": 3.0}
def other():
    return {"y": -1.0, "scale": 0.5}
'''


def test_numpyro_model_data_from_its_file(tmp_path):
    path = tmp_path / "normal_model.py"
    path.write_text(MODEL_FILE)
    spec = f"numpyro:{path}:model"

    def log_Z(target):  # normal-normal evidence: y ~ N(0, 1 + scale^2)
        y, scale = target.model_kwargs["y"], target.model_kwargs.get("scale", 1.0)
        return -0.5 * y**2 / (1 + scale**2) - 0.5 * np.log(2 * np.pi * (1 + scale**2))

    default = sdekit.resolve_target(spec)  # <model>_data before data
    assert default.model_kwargs == {"y": 1.0}
    assert sdekit.resolve_target(spec, data="other").model_kwargs == {"y": -1.0, "scale": 0.5}
    assert sdekit.resolve_target(spec, data={"y": 0.5}).model_kwargs == {"y": 0.5}
    with pytest.raises(sdekit.SdekitError, match="no 'missing'"):
        sdekit.resolve_target(spec, data="missing")
    # the log-density integrates to the evidence: check by quadrature on a grid
    target = sdekit.resolve_target(spec, data="other")
    grid = jnp.linspace(-12.0, 12.0, 4001)[:, None]
    values = np.exp(np.asarray(jax.vmap(target.log_prob)(grid), dtype=np.float64))
    assert np.log(np.trapezoid(values, dx=24.0 / 4000)) == pytest.approx(log_Z(target), abs=1e-4)


# --------------------------------------------------------------------------------------
# logistic-breast-cancer


def test_logistic_breast_cancer_target():
    target = sdekit.create("target", "logistic-breast-cancer")
    assert target.dim == 31
    sdekit.check_target(target)
    reference = json.loads((ROOT / "plugins" / "sdekit_numpyro" / "data"
                            / "logistic_breast_cancer_log_Z.json").read_text())
    assert target.log_Z == reference["log_Z"] and reference["standard_error"] < 0.01
    assert abs(reference["cross_check"]["difference_in_standard_errors"]) < 4
    # the NumPyro model of examples/logistic_regression.py is the same density
    from logistic_regression import data, model

    numpyro_target = NumPyroTarget(model, model_kwargs=data())
    w = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (4, 31))
    np.testing.assert_allclose(jax.vmap(numpyro_target.log_prob)(w),
                               jax.vmap(logistic_breast_cancer().log_prob)(w), rtol=1e-4)
