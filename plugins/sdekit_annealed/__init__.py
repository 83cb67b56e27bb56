"""Annealed samplers: `cmcd` (controlled Monte Carlo diffusion) and `scld` (sequential
controlled Langevin diffusion), a learned control along a path of densities from a
Gaussian prior to the target, with exact discrete-time weights."""

import sdekit

from ._buffer import Buffer
from ._path import AnnealedPath, LangevinKernels
from ._sampler import AnnealedSampler, Segments, cmcd, scld
from ._underdamped import PhaseSpace, Underdamped, UnderdampedKernels

__all__ = ["AnnealedPath", "AnnealedSampler", "Buffer", "LangevinKernels", "PhaseSpace",
           "Segments", "Underdamped", "UnderdampedKernels", "cmcd", "scld"]


@sdekit.hookimpl
def register_samplers(register):
    register("cmcd", cmcd)
    register("scld", scld)
