"""Targets from probabilistic programs: NumPyro models and Bayesian logistic regression.

- `numpyro`: any NumPyro model (with its data) on its unconstrained latent space, with the
  change-of-variables term in `log_prob`, so that log Z is the model's log evidence;
  `target.sites(x)` maps samples back to named, constrained sites.
- `logistic-breast-cancer`: Bayesian logistic regression on scikit-learn's breast-cancer
  data (design brief, section 4), with a stored reference log Z (`reference()`, read from
  `REFERENCE_FILE`, which `benchmarks/logistic_reference.py` writes).
"""

import sdekit

from ._logistic import REFERENCE_FILE, LogisticRegression, breast_cancer_data, logistic_breast_cancer, reference
from ._model import NumPyroTarget, numpyro_target

__all__ = [
    "REFERENCE_FILE",
    "LogisticRegression",
    "NumPyroTarget",
    "breast_cancer_data",
    "logistic_breast_cancer",
    "numpyro_target",
    "reference",
]


@sdekit.hookimpl
def register_targets(register):
    register("numpyro", numpyro_target)
    register("logistic-breast-cancer", logistic_breast_cancer)
