"""Fokker–Planck diagnostics of scores and drifts, and a finite-volume Fokker–Planck solver.

Diagnostics (registered): `fp-residual`, `ode-sde-gap`, `trajectory-l2`, `score-error`,
`girsanov-bound`; each is also a plain function here (`fp_residual`, `ode_sde_gap`,
`score_error`, `girsanov_bound`, and `model_densities_grid` / `true_densities` behind
`trajectory-l2`). The solver: `Grid` and `FokkerPlanck` (d <= 2). The pointwise operators
(divergences, residuals) are in the core, `sdekit.fokker_planck`.
"""

import sdekit

from ._diagnostics import FPResidual, GirsanovBound, ODESDEGap, ScoreError, TrajectoryL2, ode_sde_gap
from ._fv import FokkerPlanck, Grid, bernoulli, face_coefficients
from ._residuals import (
    BIN_SPACINGS,
    binned_noised_points,
    fp_residual,
    fp_residual_values,
    girsanov_bound,
    noised_points,
    score_error,
    time_bin_edges,
)
from ._scores import SinePerturbedScore
from ._trajectory import (
    GenerativeDrift,
    generative_fokker_planck,
    kde_density,
    model_densities_grid,
    simulate,
    true_densities,
)

__all__ = [
    "BIN_SPACINGS",
    "FPResidual",
    "FokkerPlanck",
    "GenerativeDrift",
    "GirsanovBound",
    "Grid",
    "ODESDEGap",
    "ScoreError",
    "SinePerturbedScore",
    "TrajectoryL2",
    "bernoulli",
    "binned_noised_points",
    "face_coefficients",
    "fp_residual",
    "fp_residual_values",
    "generative_fokker_planck",
    "girsanov_bound",
    "kde_density",
    "model_densities_grid",
    "noised_points",
    "ode_sde_gap",
    "score_error",
    "simulate",
    "time_bin_edges",
    "true_densities",
]


@sdekit.hookimpl
def register_diagnostics(register):
    register("fp-residual", FPResidual)
    register("ode-sde-gap", ODESDEGap)
    register("trajectory-l2", TrajectoryL2)
    register("score-error", ScoreError)
    register("girsanov-bound", GirsanovBound)
