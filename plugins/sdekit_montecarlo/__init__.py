"""Training-free samplers and baselines: the Föllmer drift, the Monte-Carlo score, NUTS and SMC.

Registered: scores `follmer` (Monte-Carlo Schrödinger–Föllmer drift, `pbm` reference) and
`mc-score` (self-normalised importance-sampling score of the noised target); samplers
`follmer` (the Föllmer SDE with exact log-weights), `nuts` (numpyro) and `smc` (tempered
SMC, blackjax). Every sampler here reports the number of target evaluations it used
(`sample_with_stats`).
"""

import sdekit

from ._follmer import FollmerDrift, FollmerSampler, follmer, follmer_drift
from ._mc_score import MonteCarloScore, mc_score
from ._nuts import NUTS, nuts
from ._smc import SMC, smc

__all__ = [
    "FollmerDrift",
    "FollmerSampler",
    "MonteCarloScore",
    "NUTS",
    "SMC",
    "follmer",
    "follmer_drift",
    "mc_score",
    "nuts",
    "smc",
]


@sdekit.hookimpl
def register_scores(register):
    register("follmer", follmer_drift)
    register("mc-score", mc_score)


@sdekit.hookimpl
def register_samplers(register):
    register("follmer", follmer)
    register("nuts", nuts)
    register("smc", smc)
