"""Scores and drifts: `exact` (the closed-form score of a Gaussian-mixture target under any process)."""

import sdekit

from ._exact import ExactMixtureScore, exact_score

__all__ = ["ExactMixtureScore", "exact_score"]


@sdekit.hookimpl
def register_scores(register):
    register("exact", exact_score)
