"""Bayesian logistic regression on scikit-learn's breast-cancer data (design brief, section 4)."""

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sdekit import AbstractTarget

#: The stored reference run (`benchmarks/logistic_reference.py` writes it).
REFERENCE_FILE = Path(__file__).parent / "data" / "logistic_breast_cancer_log_Z.json"


@functools.cache
def breast_cancer_data() -> tuple[np.ndarray, np.ndarray]:
    """`(X, y)`: the 569 x 30 features standardised (mean 0, population std 1) with an
    intercept column of ones prepended, so `X` is `(569, 31)`; `y` in {0, 1} (1 = benign).

    From `sklearn.datasets.load_breast_cancer`, which ships with scikit-learn (no download).
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    features = np.asarray(data.data, dtype=np.float64)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    X = np.concatenate([np.ones((features.shape[0], 1)), features], axis=1)
    return X, np.asarray(data.target, dtype=np.float64)


def reference() -> dict:
    """The stored reference run: `log_Z`, its `standard_error`, the method and its cost."""
    return json.loads(REFERENCE_FILE.read_text())


class LogisticRegression(AbstractTarget):
    r"""Bayesian logistic regression: $w \sim \mathcal N(0, I_d)$, $y_i \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(x_i^\top w))$.

    $\log\gamma(w) = \log\mathcal N(w; 0, I) + \sum_i [y_i \log\sigma(x_i^\top w) + (1 - y_i)\log\sigma(-x_i^\top w)]$,
    normalised so that $Z$ is the model evidence $p(y \mid X)$.

    **Arguments:** `X`: `(n, d)` design matrix (include an intercept column yourself), `y`:
    `(n,)` labels in {0, 1}, `log_Z`: the known log evidence, if any.
    """

    dim: int = eqx.field(static=True)
    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    _log_Z: float | None = eqx.field(static=True)

    def __init__(self, X, y, log_Z: float | None = None):
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(
                f"X must be (n, d) and y (n,); got X of shape {X.shape} and y of shape {y.shape}"
            )
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"y must hold labels 0 and 1, got values {np.unique(y)[:5]}")
        self.dim = int(X.shape[1])
        self.X, self.y = jnp.asarray(X), jnp.asarray(y)
        self._log_Z = log_Z

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        logits = self.X @ x
        log_lik = jnp.sum(self.y * jax.nn.log_sigmoid(logits)
                          + (1 - self.y) * jax.nn.log_sigmoid(-logits))
        log_prior = -0.5 * jnp.sum(x**2) - 0.5 * self.dim * jnp.log(2 * jnp.pi)
        return log_lik + log_prior

    @property
    def log_Z(self) -> float | None:
        return self._log_Z


def logistic_breast_cancer() -> LogisticRegression:
    r"""Bayesian logistic regression on scikit-learn's breast-cancer data: d = 31, $w \sim \mathcal N(0, I)$.

    569 patients, 30 standardised features and an intercept. There are no exact samples;
    `log_Z` is the stored reference value (`benchmarks/logistic_reference.py`: importance
    sampling from a Student-t fitted by a pilot run from the Laplace approximation;
    see `docs/numpyro.md`).
    """
    X, y = breast_cancer_data()
    log_Z = reference()["log_Z"] if REFERENCE_FILE.exists() else None
    return LogisticRegression(X, y, log_Z=log_Z)
