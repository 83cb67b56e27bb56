"""Diagnostics: `weights`, `sample-quality`, `eubo`, `sinkhorn` and `w2`.

The metric functions behind them (`log_Z`, `elbo`, `eubo`, `ess`, `pareto_k`,
`unique_fraction`, `mmd`, `sinkhorn`, `w2`, `sliced_w2`, `mode_coverage`, `emc`) live in the core, `sdekit.metrics`; the names
re-exported here are those same functions.
"""

import sdekit

from ._diagnostics import W2, Eubo, SampleQuality, Sinkhorn, Weights
from sdekit.metrics import (
    MAX_PARETO_K,
    MIN_ESS,
    W2_MAX_POINTS,
    SinkhornResult,
    elbo,
    emc,
    ess,
    eubo,
    log_Z,
    mmd,
    mode_counts,
    mode_coverage,
    pareto_k,
    sinkhorn,
    sliced_w2,
    unique_fraction,
    w2,
)

__all__ = [
    "Eubo",
    "MAX_PARETO_K",
    "MIN_ESS",
    "W2",
    "W2_MAX_POINTS",
    "SampleQuality",
    "Sinkhorn",
    "SinkhornResult",
    "Weights",
    "elbo",
    "emc",
    "ess",
    "eubo",
    "log_Z",
    "mmd",
    "mode_counts",
    "mode_coverage",
    "pareto_k",
    "sinkhorn",
    "sliced_w2",
    "unique_fraction",
    "w2",
]


@sdekit.hookimpl
def register_diagnostics(register):
    register("weights", Weights)
    register("sample-quality", SampleQuality)
    register("eubo", Eubo)
    register("sinkhorn", Sinkhorn)
    register("w2", W2)
