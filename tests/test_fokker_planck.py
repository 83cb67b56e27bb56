"""Fokker–Planck diagnostics and the finite-volume solver, against exact mixture scores and the OU solution."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdekit_fokker_planck import (
    FokkerPlanck,
    Grid,
    SinePerturbedScore,
    fp_residual,
    fp_residual_values,
    noised_points,
    ode_sde_gap,
)

import sdekit
from sdekit.fokker_planck import divergence, hutchinson_divergence

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"



def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FP_CHECKS = _load("fp_operator_checks")
# The operator checks' processes (so that their test reuses these compilations) and pbm.
PROCESSES = {**FP_CHECKS.PROCESSES, "pbm": ("pbm", {})}


def _target():
    """The 4-component 2-d mixture of the operator checks (so that their test reuses these compilations)."""
    return sdekit.create("target", "gmm", **FP_CHECKS.MIXTURE)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_fp_residual_vanishes_for_exact_score(name):
    """Score and log-density residuals of the exact mixture marginals: zero to float64 rounding."""
    with jax.enable_x64(True):
        target = _target()
        process = sdekit.create("process", PROCESSES[name][0], **PROCESSES[name][1])
        score = sdekit.create("score", "exact", target=target, process=process)
        ts, xs = noised_points(jax.random.key(0), process, target.sample(jax.random.key(1), 64), 64)
        for log_density in (False, True):
            values, scale = fp_residual_values(jax.random.key(2), score, process, ts, xs, log_density=log_density)
            assert values.dtype == jnp.float64
            # |R|^2 relative to the size of the two sides, point by point.
            assert float(jnp.max(values / scale)) < 1e-20, (name, log_density)


N_POINTS = 256  # one shape for every float32 residual below: shared compilations


@pytest.fixture(scope="module")
def vp_parts():
    target = _target()
    process = sdekit.create("process", "vp")
    exact = sdekit.create("score", "exact", target=target, process=process)
    # epsilon as an array: the exact (0) and perturbed scores share compilations.
    perturbed = lambda eps: SinePerturbedScore(exact, jnp.asarray(eps), 2.0)  # noqa: E731
    return target, process, perturbed


def test_fp_residual_nonzero_for_perturbed_score(vp_parts):
    target, process, perturbed = vp_parts
    x0 = target.sample(jax.random.key(0), N_POINTS)
    out = fp_residual(jax.random.key(1), perturbed(0.1), process, x0, n=N_POINTS)
    assert out["fp_residual"] > 10 * out["fp_residual_se"]
    assert out["fp_residual_relative"] > 0.05
    assert "log_fp_residual" not in out  # the perturbed field has no potential
    exact_out = fp_residual(jax.random.key(1), perturbed(0.0), process, x0, n=N_POINTS)
    assert exact_out["fp_residual_relative"] < 1e-4  # float32 rounding only
    assert out["fp_residual"] > 1e6 * exact_out["fp_residual"]
    # per time bin (10 uniform bins by default): every bin of the exact score is rounding
    # only, every bin of the perturbed one clearly non-zero
    assert len(out["fp_residual_bins"]) == len(out["fp_residual_bins_se"]) == 10
    np.testing.assert_allclose(out["fp_residual_bin_edges"], np.linspace(process.t_min, process.t_max, 11))
    bins, ses, exact_bins = (np.array(v[k]) for v, k in ((out, "fp_residual_bins"), (out, "fp_residual_bins_se"),
                                                          (exact_out, "fp_residual_bins")))
    assert np.all(bins > 3 * ses) and np.all(exact_bins < 1e-6 * bins)


class LatePerturbedScore(sdekit.AbstractScore):
    """The exact score plus eps (t - 0.55)_+^2 sin(2x): exact (and C^1 in t) up to t = 0.55."""

    base: sdekit.AbstractScore
    epsilon: float

    def __call__(self, t, x):
        return self.base(t, x) + self.epsilon * jnp.maximum(t - 0.55, 0.0) ** 2 * jnp.sin(2.0 * x)


def test_fp_residual_bins_locate_a_late_error(vp_parts):
    """A score wrong only for t > 0.55: the bins below are those of the exact score (the same
    points), the two late bins are far above them; the plot draws the bins."""
    target, process, perturbed = vp_parts
    x0 = target.sample(jax.random.key(0), N_POINTS)
    late = fp_residual(jax.random.key(1), LatePerturbedScore(perturbed(0.0).base, 1.0), process, x0,
                       n=N_POINTS, bins=4)
    exact = fp_residual(jax.random.key(1), perturbed(0.0), process, x0, n=N_POINTS, bins=4)
    assert late["fp_residual_bin_edges"][2] < 0.55 < late["fp_residual_bin_edges"][3]
    bins, ses, exact_bins = (np.array(v[k]) for v, k in ((late, "fp_residual_bins"), (late, "fp_residual_bins_se"),
                                                          (exact, "fp_residual_bins")))
    np.testing.assert_allclose(bins[:2], exact_bins[:2], rtol=1e-5)
    assert np.all(bins[2:] > 3 * ses[2:]) and np.all(bins[2:] > 1e6 * exact_bins[2:])
    # the overall value is the bins' stratified mean (equal widths: their plain mean)
    np.testing.assert_allclose(late["fp_residual"], bins.mean(), rtol=1e-6)
    np.testing.assert_allclose(late["fp_residual_se"], np.sqrt(np.sum(ses**2)) / 4, rtol=1e-6)
    diag = sdekit.create("diagnostic", "fp-residual", n=N_POINTS, bins=4)
    fig = diag.plot(late)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 2
    with pytest.raises(ValueError, match="t_min > 0"):
        fp_residual(jax.random.key(1), perturbed(0.0), sdekit.create("process", "pbm"), x0, n=N_POINTS,
                    bin_spacing="log")
    with pytest.raises(ValueError, match="n >= 2 \\* bins"):
        fp_residual(jax.random.key(1), perturbed(0.0), process, x0, n=10, bins=6)


def test_hutchinson_divergence_matches_exact(vp_parts):
    _, _, perturbed = vp_parts
    field = perturbed(0.5)
    x = jnp.array([0.3, 0.7])

    @jax.jit
    def both(field, x):
        fn = lambda y: field(0.05, y)  # noqa: E731
        return hutchinson_divergence(fn, x, jax.random.key(0), 10_000), divergence(fn, x)

    (est, se), truth = both(field, x)
    assert se > 0
    assert abs(float(est - truth)) < 5 * float(se)


def test_hutchinson_fp_residual_matches_exact(vp_parts):
    """Same points, exact versus Hutchinson: the paired difference is within 5 standard errors."""
    target, process, perturbed = vp_parts
    score = perturbed(0.3)
    ts, xs = noised_points(jax.random.key(3), process, target.sample(jax.random.key(4), N_POINTS), N_POINTS)
    ex, _ = fp_residual_values(jax.random.key(5), score, process, ts, xs)
    hu, _ = fp_residual_values(jax.random.key(5), score, process, ts, xs, divergence="hutchinson", probes=4)
    diff = np.asarray(hu - ex, dtype=np.float64)
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(diff.mean()) < 5 * se
    assert se < 0.2 * float(jnp.mean(ex))  # and the comparison has power


class _DeclaredParts(sdekit.AbstractDiffusionSampler):
    """A diffusion sampler reduced to its declared parts: the diagnostics read them and never sample."""

    process: sdekit.AbstractProcess
    score: sdekit.AbstractScore
    target: sdekit.AbstractTarget | None

    def sample(self, key, n):
        raise AssertionError("a Fokker–Planck diagnostic must not sample from the sampler")

    def sample_from(self, key, x0):
        raise AssertionError("a Fokker–Planck diagnostic must not sample from the sampler")


def test_diagnostic_reads_score_from_sampler(vp_parts):
    """Any `sdekit.AbstractDiffusionSampler` gives the diagnostic its score and process."""
    target, process, perturbed = vp_parts
    sampler = _DeclaredParts(process, perturbed(0.0), target)
    diag = sdekit.create("diagnostic", "fp-residual", n=N_POINTS)
    out = diag(jax.random.key(0), target=target, sampler=sampler)
    assert set(out) == {"fp_residual", "fp_residual_se", "fp_residual_relative", "fp_residual_bins",
                        "fp_residual_bins_se", "fp_residual_bin_edges"}
    assert out["fp_residual_relative"] < 1e-4
    assert diag(jax.random.key(0), target=target) == {}  # no score: does not apply
    with pytest.raises(sdekit.CompositionError, match="divergence"):
        sdekit.create("diagnostic", "fp-residual", divergence="trace")
    with pytest.raises(sdekit.CompositionError, match="bin_spacing"):
        sdekit.create("diagnostic", "fp-residual", bin_spacing="geometric")
    with pytest.raises(sdekit.CompositionError, match="n >= 2 \\* bins"):
        sdekit.create("diagnostic", "fp-residual", n=10, bins=6)


def test_diagnostic_reads_score_from_a_composed_reverse_sde(vp_parts):
    target, process, perturbed = vp_parts
    sampler = sdekit.compose(target, {"name": "reverse-sde", "steps": 10}, process=process, score=perturbed(0.0))
    assert isinstance(sampler, sdekit.AbstractDiffusionSampler)
    out = sdekit.create("diagnostic", "fp-residual", n=N_POINTS)(jax.random.key(0), target=target, sampler=sampler)
    assert out["fp_residual_relative"] < 1e-4


def test_ode_sde_gap_within_noise_floor_and_grows(vp_parts):
    """Exact score: the W2 excess of the ODE-SDE gap over the SDE noise floor is within 3
    standard errors of 0 (batches); a score perturbation opens the gap, more for a larger one."""
    target, process, perturbed = vp_parts
    gaps = {}
    for eps in (0.0, 0.5, 1.0):
        parts = dict(target=target, process=process, score=perturbed(eps))
        sde = sdekit.create("sampler", "reverse-sde", steps=200, **parts)
        ode = sdekit.create("sampler", "pf-ode", solver="heun", steps=100, divergence="hutchinson", **parts)
        gaps[eps] = ode_sde_gap(jax.random.key(7), sde, ode, 2000, batches=8, w2_points=500)
    exact = gaps[0.0]
    assert exact["w2_excess"] < 3 * exact["w2_excess_se"]
    assert gaps[0.5]["w2_excess"] > 5 * gaps[0.5]["w2_excess_se"]
    assert gaps[1.0]["w2_gap"] > gaps[0.5]["w2_gap"] > exact["w2_gap"]
    assert gaps[0.5]["mmd_gap"] > 10 * abs(gaps[0.5]["mmd_floor"])


def test_trajectory_l2_score_error_and_girsanov_bound_1d():
    """1-d mixture under VP: with the exact score the grid trajectory error is the grid's
    own, the score error and the Girsanov score term are 0; a perturbation of size eps
    gives a score error of at most eps^2 and clearly larger tracking errors."""
    target = sdekit.create("target", "gmm", means=[[-2.0], [1.0]], covs=[0.3, 0.6])
    process = sdekit.create("process", "vp")
    exact = sdekit.create("score", "exact", target=target, process=process)
    tl2 = sdekit.create("diagnostic", "trajectory-l2", cells=200, times=4, substeps=25)
    err = sdekit.create("diagnostic", "score-error", n=2000)
    gb = sdekit.create("diagnostic", "girsanov-bound", n=2000)
    out = {}
    for eps in (0.0, 0.3):
        score = SinePerturbedScore(exact, jnp.asarray(eps), 2.0)
        key = jax.random.key(0)
        out[eps] = {
            **tl2(key, target=target, score=score, process=process),
            **err(key, target=target, score=score, process=process),
            **gb(key, target=target, score=score, process=process),
        }
    assert out[0.0]["trajectory_l2_relative_final"] < 0.02
    assert out[0.3]["trajectory_l2_final"] > 5 * out[0.0]["trajectory_l2_final"]
    assert out[0.0]["score_error"] == 0.0 and out[0.0]["score_term"] == 0.0
    assert 0.0 < out[0.3]["score_error"] <= 0.3**2
    assert out[0.3]["score_error"] > 10 * out[0.3]["score_error_se"]
    assert out[0.3]["girsanov_bound"] > out[0.3]["score_term"] - 5 * out[0.3]["girsanov_bound_se"]
    assert abs(out[0.0]["kl_prior"]) < 5 * out[0.0]["kl_prior_se"] + 1e-3  # p_T ~ prior for VP


@pytest.mark.parametrize("dim", [1, 2])
def test_fv_solver_matches_ou_and_conserves_mass(dim):
    """OU dX = -X dt + sqrt(2) dW from N(m, 0.25 I): L2 error shrinks ~4x per halving of
    h (dt ~ h^2), mass is conserved to 1e-8, the density stays non-negative."""
    with jax.enable_x64(True):
        m0 = jnp.array([1.5, -1.0][:dim])

        def gauss(m, v):
            return lambda x: -0.5 * jnp.sum((x - m) ** 2) / v - 0.5 * dim * jnp.log(2 * jnp.pi * v)

        errors = []
        for cells, steps in [(40, 16), (80, 64)]:
            grid = Grid([-6.0] * dim, [6.0] * dim, cells)
            rho0 = jnp.exp(grid.evaluate(gauss(m0, 0.25)))
            fp = FokkerPlanck(lambda t, x: -x, jnp.sqrt(2.0), grid)
            rhos = fp.solve(rho0, jnp.array([0.0, 0.5, 1.0]), steps // 2)
            e2 = jnp.exp(-2.0)
            exact = jnp.exp(grid.evaluate(gauss(m0 * jnp.exp(-1.0), 0.25 * e2 + 1 - e2)))
            errors.append(float(grid.l2(rhos[-1], exact)))
            assert abs(float(grid.mass(rhos[-1]) - grid.mass(rho0))) < 1e-8
            assert float(jnp.min(rhos)) >= 0
        assert errors[1] < 0.35 * errors[0]
        assert errors[1] < 5e-3


def test_fv_solver_bicgstab_agrees_with_splitting_in_2d():
    with jax.enable_x64(True):
        grid = Grid([-4.0, -4.0], [4.0, 4.0], 24)
        rho0 = grid.density(lambda x: -jnp.sum((x - 1.0) ** 2))
        drift = lambda t, x: -x + jnp.array([x[1], -x[0]])  # noqa: E731
        split = FokkerPlanck(drift, 1.0, grid).solve(rho0, jnp.array([0.0, 0.5]), 50)
        full = FokkerPlanck(drift, 1.0, grid, method="bicgstab").solve(rho0, jnp.array([0.0, 0.5]), 50)
        assert abs(float(grid.mass(full[-1]) - 1.0)) < 1e-8
        # both first order in dt: they differ by the splitting error, O(dt)
        assert float(grid.l2(split[-1], full[-1])) < 0.02 * float(grid.l2(full[-1], 0 * full[-1]))


def test_fv_solver_is_differentiable_in_drift_parameters():
    with jax.enable_x64(True):
        grid = Grid([-5.0], [5.0], 100)
        rho0 = grid.density(lambda x: -2 * jnp.sum((x - 1.0) ** 2))

        def loss(theta):
            fp = FokkerPlanck(lambda t, x: -theta * x, 1.0, grid)
            rho = fp.solve(rho0, jnp.array([0.0, 0.5]), 20)[-1]
            return jnp.sum(rho * grid.axis(0)) * grid.cell_volume  # the mean

        g = jax.grad(loss)(1.0)
        fd = (loss(1.0 + 1e-5) - loss(1.0 - 1e-5)) / 2e-5
        assert abs(float(g - fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="cells"):
        Grid([-1.0], [1.0], 1)
    with pytest.raises(ValueError, match="upper > lower"):
        Grid([1.0], [-1.0], 10)
    with pytest.raises(ValueError, match="method"):
        FokkerPlanck(lambda t, x: x, 1.0, Grid([-1.0], [1.0], 10), method="lu")
    with pytest.raises(sdekit.CompositionError, match="probes"):
        sdekit.create("diagnostic", "fp-residual", divergence="hutchinson", probes=1)


def test_noise_regularisation_pass_criteria():
    """Noise regularisation: SDE L2 error to the sign-drift solution decreasing in k, < 1e-2 at k = 16;
    ODE W2 to the k = ∞ ODE decreasing while its density's L2 norm explodes."""
    result = _load("noise_regularisation").run(cells=1600, dt=2e-3)
    assert result["checks"] == {
        "sde_l2_decreasing": True,
        "sde_l2_k16_below_1e-2": True,
        "ode_w2_decreasing": True,
        "ode_norm_growing": True,
    }
    norms = [r["ode_log10_l2_norm"] for r in result["rows"]]
    assert norms[-1] > 20  # 25.1 in benchmarks/results/noise_regularisation.json


def test_fp_operator_checks_pass_criteria():
    """The Fokker–Planck operator checks without its sampling part (the ODE-SDE gap has its own test above): relative
    log-FP and score-FP residuals of the analytic marginals < 1e-6 in float64 under OU
    and VE (VP in the benchmark script: the same code as OU, another compilation); Hutchinson with 1e4 probes within 1% of the exact divergence (median over
    points) and within 5 standard errors at every point."""
    result = FP_CHECKS.run(processes=("ou", "ve"), n_points=64, hutchinson_points=10, gap=False)  # vp: the benchmark
    for name, row in result["rows"].items():
        assert all(row["checks"].values()), (name, row["checks"])


def test_exact_mixture_scores():
    """The exact-mixture-scores benchmark in small: the exact PBM (Föllmer) control and VP score agree with their Monte-Carlo
    estimates within 5 Monte-Carlo standard errors at every point; the reverse SDE with the
    exact score under VP and PBM reproduces the 10-component mixture (MMD² within 2x the
    noise floor; 500 Euler steps, 100 are visibly biased for VP) with log Z within 0.05
    from its exact discrete-time weights."""
    bench = _load("exact_mixture_scores")
    target = bench.mixture10()
    drifts = bench.drift_checks(target, draws=4000, n_points=8, which=("pbm",))  # VP: the benchmark
    for name, row in drifts.items():
        assert row["max_error_over_se"] < 5, (name, row)
    samplers = bench.sampler_checks(target, n=1000, steps=500, samplers=("reverse-sde/vp", "reverse-sde/pbm"))
    for name in ("reverse-sde/vp", "reverse-sde/pbm"):
        assert samplers[name]["mmd_within_2x_floor"], (name, samplers[name], samplers["mmd_floor_rms"])
        assert samplers[name]["log_Z_within_0.05"], (name, samplers[name])
