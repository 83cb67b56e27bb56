"""Forward (noising) SDEs: `vp`, `ve`, `subvp` and `pbm`."""

import sdekit

from ._processes import PBM, VE, VP, SubVP

__all__ = ["PBM", "VE", "VP", "SubVP"]


@sdekit.hookimpl
def register_processes(register):
    register("vp", VP)
    register("ve", VE)
    register("subvp", SubVP)
    register("pbm", PBM)
