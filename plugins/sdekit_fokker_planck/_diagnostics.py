"""The registered diagnostics: `fp-residual`, `ode-sde-gap`, `trajectory-l2`, `score-error`, `girsanov-bound`.

They follow the calling convention of `sdekit.AbstractDiagnostic`,
`diagnostic(key, target=..., sampler=..., samples=...) -> dict of plain numbers`, extended
additively: the score and the process come from `sampler.score` and `sampler.process`
(any `sdekit.AbstractDiffusionSampler`, such as `reverse-sde` or `pf-ode`), or are given as the keyword arguments `score=` and
`process=`; the exact score is `reference=` or, for a Gaussian-mixture target, built as
`sdekit.create("score", "exact", target=target, process=process)`. Data $x_0 \\sim \\pi$
are the target's exact samples when it has them, else the rows of `samples`. A diagnostic
that lacks what it needs returns `{}`.
"""

import abc
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

import sdekit
from sdekit import (
    AbstractDensityScore,
    AbstractDiagnostic,
    AbstractDiffusionSampler,
    AbstractProcess,
    AbstractSampler,
    AbstractScore,
    AbstractTarget,
    Samples,
)
from sdekit.fokker_planck import check_divergence
from sdekit.metrics import mmd, sliced_w2, w2

from ._fv import Grid
from ._residuals import BIN_SPACINGS, fp_residual, girsanov_bound, score_error
from ._trajectory import KINDS, kde_density, model_densities_grid, simulate, true_densities

if TYPE_CHECKING:
    from matplotlib.figure import Figure

W2_MAX = 5000


def _parts(sampler, score, process) -> tuple[AbstractScore | None, AbstractProcess | None]:
    """The score and process given, else those of a diffusion sampler; `None`s if either is missing."""
    if isinstance(sampler, AbstractDiffusionSampler):
        score = sampler.score if score is None else score
        process = sampler.process if process is None else process
    if not isinstance(score, AbstractScore) or not isinstance(process, AbstractProcess):
        return None, None
    return score, process


def _data(key, target, samples, n: int):
    """Rows of the target law: exact target samples, else the finite rows of `samples`."""
    if target is not None and target.has_exact_samples:
        return target.sample(key, n)
    if samples is not None:
        x = jnp.asarray(samples.x)
        x = x[np.all(np.isfinite(np.asarray(x)), axis=1)]
        return x if x.shape[0] >= 2 else None
    return None


def _reference(reference, target, process):
    if reference is not None:
        return reference
    if target is None or target.mixture is None:
        return None
    return sdekit.create("score", "exact", target=target, process=process)


def _check_count(**values) -> None:
    for name, (value, least) in values.items():
        if isinstance(value, bool) or not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


class FPResidual(AbstractDiagnostic):
    r"""The score Fokker–Planck residual $E_{t, x\sim p_t}\|R\|^2$ (and the log-density one for potentials), overall and per time bin.

    $R = \partial_t s - \nabla_x[\tfrac12 g^2(\nabla\cdot s + \|s\|^2) - f\cdot s - \nabla\cdot f]$
    at `n` points $(t, x_t)$, $x_t$ the forward process from data, $t$ stratified in
    `bins` intervals of the process's window (`bin_spacing`: `"uniform"` in $t$, the
    default, or `"log"` in $\log t$, which needs $t_{\min} > 0$; `n >= 2 * bins`).
    `divergence`: `"exact"` (Jacobian traces, small `d`) or `"hutchinson"` (`probes`
    Rademacher probes per point, combined into an unbiased estimate of $\|R\|^2$).

    Returns `fp_residual`, `fp_residual_se`, `fp_residual_relative`, the per-bin lists
    `fp_residual_bins`, `fp_residual_bins_se` and `fp_residual_bin_edges`, and, for a
    `sdekit.AbstractPotentialScore` (a potential net; the exact mixture score),
    `log_fp_residual*` for
    $\partial_t u + \nabla\cdot f + f\cdot\nabla u - \tfrac12 g^2(\Delta u + |\nabla u|^2)$.
    `plot` draws the per-bin residuals against $t$ (see `fp_residual`).
    """

    n: int = 1000
    divergence: str = "exact"
    probes: int = 2
    bins: int = 10
    bin_spacing: str = "uniform"

    def __check_init__(self):
        _check_count(n=(self.n, 2), bins=(self.bins, 1))
        check_divergence(self.divergence, self.probes)
        if self.bin_spacing not in BIN_SPACINGS:
            raise ValueError(f"bin_spacing must be one of {BIN_SPACINGS}, got {self.bin_spacing!r}")
        if self.n < 2 * self.bins:
            raise ValueError(f"need n >= 2 * bins (two points per time bin), got n={self.n}, bins={self.bins}")

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
        score: AbstractScore | None = None,
        process: AbstractProcess | None = None,
    ) -> dict[str, float | list[float]]:
        score, process = _parts(sampler, score, process)
        k_data, k_res = jax.random.split(key)
        x0 = None if score is None else _data(k_data, target, samples, self.n)
        if x0 is None:
            return {}
        return fp_residual(
            k_res, score, process, x0, n=self.n, divergence=self.divergence, probes=self.probes,
            bins=self.bins, bin_spacing=self.bin_spacing,
        )

    def plot(self, values: dict[str, Any]) -> "Figure | None":
        r"""Per time bin: $E\|R\|^2$ with ±2 standard errors (one panel per residual), and
        the overall value as a dashed line; log scales where the values allow."""
        if "fp_residual_bins" not in values:
            return None
        from matplotlib.figure import Figure

        edges = np.asarray(values["fp_residual_bin_edges"], dtype=float)
        log_t = self.bin_spacing == "log"
        centres = np.sqrt(edges[:-1] * edges[1:]) if log_t else 0.5 * (edges[:-1] + edges[1:])
        names = [n for n in ("fp_residual", "log_fp_residual") if f"{n}_bins" in values]
        titles = {"fp_residual": "score residual $E\\|R_s\\|^2$",
                  "log_fp_residual": "log-density residual $E R_u^2$"}
        fig = Figure(figsize=(5.0 * len(names), 3.8), layout="constrained")
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            mean = np.asarray(values[f"{name}_bins"], dtype=float)
            se = np.asarray(values[f"{name}_bins_se"], dtype=float)
            ax.errorbar(centres, mean, yerr=2 * se, fmt="o-", ms=3, capsize=2, label="per bin ± 2 SE")
            ax.axhline(values[name], color="k", ls="--", lw=1, label="overall")
            if log_t:
                ax.set_xscale("log")
            if np.all(mean > 0):
                ax.set_yscale("log", nonpositive="clip")
            else:  # unbiased Hutchinson estimates near 0 can be negative
                ax.set_yscale("symlog", linthresh=max(float(np.max(np.abs(se))), 1e-30))
            for e in edges:
                ax.axvline(e, color="0.85", lw=0.5, zorder=0)
            ax.set_xlabel("t")
            ax.set_title(titles[name])
            ax.legend(fontsize=8)
        return fig


def _w2_excess(x_ode: np.ndarray, x_a: np.ndarray, x_b: np.ndarray, batches: int) -> np.ndarray:
    """Per part of `batches` equal parts: W2(ODE, A) − W2(B, A)."""
    size = x_a.shape[0] // batches
    parts = [slice(i * size, (i + 1) * size) for i in range(batches)]
    return np.array([w2(x_ode[p], x_a[p]) - w2(x_b[p], x_a[p]) for p in parts])


def ode_sde_gap(
    key: PRNGKeyArray,
    sde: AbstractSampler,
    ode: AbstractSampler,
    n: int = 2000,
    *,
    batches: int = 5,
    w2_points: int = 2000,
    projections: int = 128,
) -> dict[str, float]:
    r"""How far the PF-ODE's samples are from the reverse SDE's, against the SDE's own noise floor.

    Draws `n` samples from `ode` and two independent sets A, B of `n` from `sde`. Between
    ODE and A (`*_gap`) and between B and A (`*_floor`, the noise floor): exact `w2` on
    `min(n, w2_points)` (<= 5000) points, `sliced_w2` and the unbiased `mmd` (MMD²,
    median-heuristic bandwidth) on all; `w2_ratio` = gap / floor. A single floor is one
    draw of a noisy statistic, so the samples are also split into `batches` parts and
    `w2_excess` is the mean over parts of W2(ODE, A) − W2(B, A), with its standard error
    `w2_excess_se`: the gap is within the noise floor when the excess is within a few
    standard errors of zero. Non-finite rows are dropped and counted
    (`n_nonfinite_ode`, `n_nonfinite_sde`).
    """
    _check_count(n=(n, 2), w2_points=(w2_points, 2), batches=(batches, 2))
    if w2_points > W2_MAX:
        raise ValueError(f"w2_points must be <= {W2_MAX} (exact W2 is O(n^3)), got {w2_points}")
    if n // batches < 2 or n // batches > W2_MAX:
        raise ValueError(f"need 2 <= n // batches <= {W2_MAX}, got n={n}, batches={batches}")
    k_ode, k_a, k_b, k_w = jax.random.split(key, 4)
    x_ode = np.asarray(ode.sample(k_ode, n).x)
    x_a, x_b = np.asarray(sde.sample(k_a, n).x), np.asarray(sde.sample(k_b, n).x)
    finite = [np.all(np.isfinite(x), axis=1) for x in (x_ode, x_a, x_b)]
    counts = {
        "n_nonfinite_ode": int(n - finite[0].sum()),
        "n_nonfinite_sde": int(2 * n - finite[1].sum() - finite[2].sum()),
    }
    m = int(min(f.sum() for f in finite))
    if m // batches < 2:
        return counts
    x_ode, x_a, x_b = (x[f][:m] for x, f in zip((x_ode, x_a, x_b), finite))
    k = min(m, w2_points)
    excess = _w2_excess(x_ode, x_a, x_b, batches)
    out = {
        "w2_gap": w2(x_ode[:k], x_a[:k]),
        "w2_floor": w2(x_b[:k], x_a[:k]),
        "w2_excess": float(excess.mean()),
        "w2_excess_se": float(excess.std(ddof=1) / np.sqrt(batches)),
        "sliced_w2_gap": float(sliced_w2(x_ode, x_a, k_w, projections=projections)),
        "sliced_w2_floor": float(sliced_w2(x_b, x_a, k_w, projections=projections)),
        "mmd_gap": float(mmd(x_ode, x_a)),
        "mmd_floor": float(mmd(x_b, x_a)),
        **counts,
    }
    out["w2_ratio"] = out["w2_gap"] / out["w2_floor"]
    return out


class ODESDEGap(AbstractDiagnostic):
    """`ode_sde_gap` for the score and process of a diffusion sampler (or `score=`, `process=`).

    The pair is built by name (`sdekit.create`) with the same target, process and score: a
    `reverse-sde` with `sde_steps` Euler–Maruyama steps and a `pf-ode` with the defaults
    of `pf-ode`. A `reverse-sde` or `pf-ode` sampler given stands for its own side of the
    pair, with its own settings. Needs the target (for its dimension). Options: `n`, `batches`, `w2_points`, `projections`, `sde_steps`.
    """

    n: int = 2000
    batches: int = 5
    w2_points: int = 2000
    projections: int = 128
    sde_steps: int = 500

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
        score: AbstractScore | None = None,
        process: AbstractProcess | None = None,
    ) -> dict[str, float]:
        score, process = _parts(sampler, score, process)
        if score is None or target is None:
            return {}
        parts = dict(target=target, process=process, score=score)
        sde = sdekit.create("sampler", "reverse-sde", steps=self.sde_steps, **parts)
        ode = sdekit.create("sampler", "pf-ode", **parts)
        # The sampler itself stands for its side of the pair, with its own settings.
        if isinstance(sampler, AbstractDiffusionSampler) and sampler.score is score and sampler.process is process:
            sde = sampler if type(sampler) is type(sde) else sde
            ode = sampler if type(sampler) is type(ode) else ode
        return ode_sde_gap(
            key, sde, ode, self.n, batches=self.batches, w2_points=self.w2_points,
            projections=self.projections,
        )


def _box(x0: np.ndarray, margin: float) -> tuple[list[float], list[float]]:
    lo, hi = np.quantile(x0, 0.0005, axis=0), np.quantile(x0, 0.9995, axis=0)
    pad = margin * (hi - lo)
    return (lo - pad).tolist(), (hi + pad).tolist()


class TrajectoryL2(AbstractDiagnostic):
    r"""L2 distance between the model's marginal densities and the true $p_t$ along generative time ($d \le 2$).

    The model is the reverse SDE (`kind="sde"`) or the PF-ODE (`"ode"`) of the sampler's
    score, started from the prior at `t_max`; its densities at `times` forward times
    (evenly spaced from `t_max` to `t_min`, `t_max` excluded) come from the finite-volume
    solver (`method="grid"`, `substeps` implicit steps per interval) or from a KDE of `n`
    simulated particles (`method="kde"`, `substeps` Euler steps per interval). The true
    $p_t$ is analytic for a Gaussian-mixture target (or a `reference` that is an
    `sdekit.AbstractDensityScore`), else
    the forward FP equation solved on the grid from the target density. The grid has
    `cells` per axis over `lower`..`upper` (default: the data's 0.05%..99.95% quantiles
    widened by `margin` of the range on each side).

    Returns `trajectory_l2` (mean over the times), `trajectory_l2_final` (at `t_min`),
    `trajectory_l2_max`, and `trajectory_l2_relative_final` ($\|q - p\|_2 / \|p\|_2$ at `t_min`).
    """

    kind: str = "sde"
    method: str = "grid"
    times: int = 10
    cells: int = 200
    substeps: int = 50
    n: int = 20_000
    margin: float = 0.25
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None

    def __check_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.method not in ("grid", "kde"):
            raise ValueError(f"method must be 'grid' or 'kde', got {self.method!r}")
        _check_count(times=(self.times, 1), cells=(self.cells, 2), substeps=(self.substeps, 1), n=(self.n, 2))

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
        score: AbstractScore | None = None,
        process: AbstractProcess | None = None,
        reference: AbstractScore | None = None,
    ) -> dict[str, float]:
        score, process = _parts(sampler, score, process)
        k_data, k_sim = jax.random.split(key)
        x0 = None if score is None else _data(k_data, target, samples, self.n)
        if x0 is None or x0.shape[-1] > 2:
            return {}
        lower, upper = _box(np.asarray(x0), self.margin)
        grid = Grid(lower if self.lower is None else self.lower, upper if self.upper is None else self.upper, self.cells)
        frac = jnp.arange(1, self.times + 1) / self.times
        times = process.t_max - (process.t_max - process.t_min) * frac
        ref = _reference(reference, target, process)
        log_p = ref.log_prob if isinstance(ref, AbstractDensityScore) else None
        true = true_densities(
            log_p, process, grid, times, None if target is None else target.log_prob, self.substeps
        )
        if self.method == "grid":
            model = model_densities_grid(score, process, grid, times, kind=self.kind, substeps=self.substeps)
        else:
            prior = process.prior_sample(k_sim, (self.n, x0.shape[-1]))
            xs = simulate(jax.random.fold_in(k_sim, 1), score, process, prior, times, kind=self.kind, substeps=self.substeps)
            model = jnp.stack([kde_density(grid, x) for x in xs])
        l2 = np.asarray(jax.vmap(grid.l2)(model, true))
        return {
            "trajectory_l2": float(np.mean(l2)),
            "trajectory_l2_final": float(l2[-1]),
            "trajectory_l2_max": float(np.max(l2)),
            "trajectory_l2_relative_final": float(l2[-1] / grid.l2(true[-1], jnp.zeros_like(true[-1]))),
        }


class _AgainstExactScore(AbstractDiagnostic):
    """A measure of a score against the exact one (`reference=`, or the closed form for a
    Gaussian-mixture target), on `n` points $(t, x_t)$ as in `fp-residual`."""

    n: int = 4000

    def __check_init__(self):
        _check_count(n=(self.n, 2))

    @abc.abstractmethod
    def _measure(self, key, score, reference, process, x0) -> dict[str, float]:
        ...

    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
        score: AbstractScore | None = None,
        process: AbstractProcess | None = None,
        reference: AbstractScore | None = None,
    ) -> dict[str, float]:
        score, process = _parts(sampler, score, process)
        ref = None if score is None else _reference(reference, target, process)
        k_data, k_measure = jax.random.split(key)
        x0 = None if ref is None else _data(k_data, target, samples, self.n)
        if x0 is None:
            return {}
        return self._measure(k_measure, score, ref, process, x0)


class ScoreError(_AgainstExactScore):
    r"""`score_error`: $E_{t, x\sim p_t}\|s_\theta - \nabla\log p_t\|^2$ against the exact score, with its SE."""

    def _measure(self, key, score, reference, process, x0):
        return score_error(key, score, reference, process, x0, n=self.n)


class GirsanovBound(_AgainstExactScore):
    r"""`girsanov_bound`: $\mathrm{KL}(p_{t_{\max}}\|\text{prior}) + \tfrac12\int g^2 E\|s_\theta - \nabla\log p_t\|^2 dt$.

    An upper bound on $\mathrm{KL}(p_{t_{\min}} \| q)$ for the model $q$ of the reverse SDE
    (continuous time). Needs the exact score as an `sdekit.AbstractDensityScore`
    (`reference=`, or a Gaussian-mixture target). Returns the bound, its two terms, and standard errors.
    """

    def _measure(self, key, score, reference, process, x0):
        if not isinstance(reference, AbstractDensityScore):
            return {}
        return girsanov_bound(key, score, reference, process, x0, n=self.n)

