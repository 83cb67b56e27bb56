import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, ScalarLike

from sdekit import AbstractScore


class SinePerturbedScore(AbstractScore):
    r"""$s(t, x) + \varepsilon \sin(\omega x)$ (componentwise): a score with an error that is
    small in $L^2$ but has Lipschitz constant $\varepsilon\omega$ (seed 000's experiments).
    It has no `log_prob` or `potential`: nothing of the base's exactness is passed on.
    """

    base: AbstractScore
    epsilon: float
    omega: float

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.base(t, x) + self.epsilon * jnp.sin(self.omega * x)
