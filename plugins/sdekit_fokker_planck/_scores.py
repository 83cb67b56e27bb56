import jax.numpy as jnp
from jaxtyping import Array, Float, ScalarLike

from sdekit import AbstractScore


class SinePerturbedScore(AbstractScore):
    r"""$s(t, x) + \varepsilon \sin(\omega x)$ (componentwise): a score with an error that is
    small in $L^2$ but has Lipschitz constant $\varepsilon\omega$, for testing how the
    diagnostics respond to a known error.

    A plain `sdekit.AbstractScore`, even when the base is a density score: the perturbed
    field has no exact `log_prob`, and it declares no `potential`, so the diagnostics
    compare it with the exact score and compute its score residual only.
    """

    base: AbstractScore
    epsilon: float
    omega: float

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.base(t, x) + self.epsilon * jnp.sin(self.omega * x)
