"""Samplers driven by a score: `reverse-sde` and `pf-ode`."""

import sdekit

from ._pf_ode import PFODE, pf_ode
from ._reverse_sde import ReverseSDE, reverse_sde

__all__ = ["PFODE", "ReverseSDE", "pf_ode", "reverse_sde"]


@sdekit.hookimpl
def register_samplers(register):
    register("reverse-sde", reverse_sde)
    register("pf-ode", pf_ode)
