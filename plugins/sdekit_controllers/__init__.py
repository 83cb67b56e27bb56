"""Controllers: learnable drifts `u_θ(t, x)` for the trained samplers (`pis`, `dds`, `dis`)."""

import sdekit

from ._networks import (
    FourierTime,
    LimitedWidth,
    PISGrad,
    TimeMLP,
    limited_width,
    pis_grad,
    time_mlp,
)

__all__ = [
    "FourierTime",
    "LimitedWidth",
    "PISGrad",
    "TimeMLP",
    "limited_width",
    "pis_grad",
    "time_mlp",
]


@sdekit.hookimpl
def register_controllers(register):
    register("pis-grad", pis_grad)
    register("mlp", time_mlp)
    register("limited-width", limited_width)
