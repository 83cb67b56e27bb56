"""Benchmark targets: `gaussian`, `gmm`, `gmm40`, `funnel`, `many-well-54`, `many-well-32`.

The benchmark targets of the diffusion-sampler literature (Gaussian mixtures, Neal's
funnel, many-well). Every target here has exact samples and a known `log_Z`; the
Gaussian ones also expose `mixture` (exact scores).

`log_prob` and `sample` are wrapped in `equinox.filter_jit`, so eager calls (the CLI,
`check_target`) compile once instead of dispatching op by op; inside a caller's `jit`,
`vmap` or `grad` they trace through as usual.
"""

import sdekit

from ._funnel import Funnel
from ._gaussian import GMM, Gaussian, gmm40
from ._many_well import ManyWell32, ManyWell54

__all__ = ["GMM", "Funnel", "Gaussian", "ManyWell32", "ManyWell54", "gmm40"]


@sdekit.hookimpl
def register_targets(register):
    register("gaussian", Gaussian)
    register("gmm", GMM)
    register("gmm40", gmm40)
    register("funnel", Funnel)
    register("many-well-54", ManyWell54)
    register("many-well-32", ManyWell32)
