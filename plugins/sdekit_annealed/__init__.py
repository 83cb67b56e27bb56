"""Annealed samplers: `cmcd` (controlled Monte Carlo diffusion) and `scld` (sequential
controlled Langevin diffusion), a learned control along a path of densities from a
Gaussian prior to the target, with exact discrete-time weights."""

import sdekit

from ._path import AnnealedPath, LangevinKernels
from ._sampler import AnnealedSampler, Segments, cmcd, scld

__all__ = ["AnnealedPath", "AnnealedSampler", "Segments", "LangevinKernels", "cmcd", "scld"]


@sdekit.hookimpl
def register_samplers(register):
    register("cmcd", cmcd)
    register("scld", scld)
