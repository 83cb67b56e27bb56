"""The example plugin's tests: conformance with `sdekit.testing`, use by name from Python
and from the `sdekit` command line. They run against the installed package (its entry
point registers the plugin); nothing here registers it by hand."""

import json
import math

import jax
import pytest
from click.testing import CliRunner

import sdekit
import sdekit.testing
from sdekit.cli import cli
from sdekit_example import OrnsteinUhlenbeck, Ring


def run_cli(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_installed_plugin_registers_every_part():
    report = json.loads(run_cli("plugins", "--json"))["plugins"]["example"]
    assert report["names"] == {"controller": ["linear"], "diagnostic": ["mode-balance"],
                               "process": ["ou"], "target": ["ring"]}
    assert report["commands"] == ["ou-table"]


@pytest.mark.parametrize("process", ["ou", OrnsteinUhlenbeck(theta=0.25, sigma=3.0, T=10.0, t_max=10.0)])
def test_process_conforms(process):
    sdekit.testing.check_process(process)


def test_target_conforms():
    sdekit.testing.check_target(Ring(modes=3, radius=2.0, scale=1.0, log_z=-1.5))


def test_exact_score_of_the_ring_under_ou():
    sdekit.testing.check_score("exact", target="ring", process="ou")


def test_controller_conforms():
    control = sdekit.create("controller", "linear", target="ring", seed=3)
    sdekit.testing.check_score(control, target="ring")


def test_reverse_sde_under_ou_samples_the_ring():
    """Exact score, OU process: log Z-hat within K_SE standard errors of log Z."""
    sampler = sdekit.compose(Ring(log_z=0.7), {"name": "reverse-sde", "steps": 200},
                             process="ou", score="exact")
    measured = sdekit.testing.check_sampler(sampler, n=2000)
    assert measured


def test_pis_with_the_linear_controller_composes_by_name():
    """A trained sampler takes the example controller and process by name. Untrained, it
    is the OU reference process plus a small linear drift, and its weights are still exact:
    on a ring inside the reference's unit std, log Z-hat matches log Z."""
    ring = Ring(modes=4, radius=1.0, scale=0.6, log_z=0.3)
    sampler = sdekit.compose(ring, {"name": "pis", "steps": 64}, process="ou",
                             controller="linear")
    sdekit.testing.check_sampler(sampler, ring, n=2000)


def test_mode_balance_diagnostic():
    target = Ring()
    exact = sdekit.Samples(target.sample(jax.random.key(0), 4000), None)
    values = sdekit.testing.check_diagnostic("mode-balance", target=target, samples=exact)
    # Exact samples: each mode's share is a binomial proportion with SE sqrt(p(1-p)/n);
    # the TV sums 8 such deviations, so it stays below 8 * K_SE * SE / 2.
    se = math.sqrt((1 / 8) * (7 / 8) / 4000)
    assert values["mode_tv"] < 0.5 * 8 * sdekit.testing.K_SE * se
    assert values["modes_visited"] == 1.0
    one_mode = sdekit.Samples(exact.x[:1].repeat(10, axis=0), None)
    assert sdekit.create("diagnostic", "mode-balance")(
        jax.random.key(0), target=target, samples=one_mode)["modes_visited"] == 1 / 8
    assert sdekit.testing.check_diagnostic("mode-balance", target=sdekit.create("target", "funnel"),
                                           samples=exact) == {}


def test_ou_table_command():
    rows = json.loads(run_cli("ou-table", "--theta", "2", "--sigma", "1", "--points", "3", "--json"))
    assert [r["t"] for r in rows] == [0.0, 2.0, 4.0]
    assert rows[0]["a"] == 1.0 and rows[0]["std"] == 0.0
    assert rows[2]["reference_std"] == pytest.approx(0.5)
    assert "reference" in run_cli("ou-table")


def test_ou_table_rejects_a_bad_parameter():
    result = CliRunner().invoke(cli, ["ou-table", "--theta", "-1"])
    assert result.exit_code != 0
    assert "theta must be positive, got -1.0" in result.output


def test_sample_command_uses_the_parts_by_name(tmp_path):
    out = tmp_path / "ring"
    run_cli("sample", "ring", "--sampler", "reverse-sde", "--process", "ou", "--score", "exact",
            "--steps", "50", "-n", "500", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["log_Z"])
    run_cli("diagnose", str(out), "-d", "mode-balance")
    found = json.loads((out / "diagnostics.json").read_text())["mode-balance"]
    assert found["modes_visited"] == 1.0
    assert (out / "mode-balance.png").exists()
