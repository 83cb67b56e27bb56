"""Samplers: `reverse-sde` and `pf-ode` driven by a score; `pis`, `dds`, `dis` trained."""

import sdekit

from ._controlled import ControlledSDE, dds, dis, pis
from ._pf_ode import PFODE, pf_ode
from ._reverse_sde import ReverseSDE, reverse_sde

__all__ = ["ControlledSDE", "PFODE", "ReverseSDE", "dds", "dis", "pf_ode", "pis", "reverse_sde"]


@sdekit.hookimpl
def register_samplers(register):
    register("reverse-sde", reverse_sde)
    register("pf-ode", pf_ode)
    register("pis", pis)
    register("dds", dds)
    register("dis", dis)
