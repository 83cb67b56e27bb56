import abc

import equinox as eqx
from jaxtyping import Array, Float, ScalarLike


class AbstractScore(eqx.Module):
    r"""A time-dependent vector field $(t, x) \mapsto \mathbb R^d$ for **one** point.

    Scores $s(t, x) \approx \nabla_x \log p_t(x)$ (in the forward time of a process) and
    control drifts $u(t, x)$ (Föllmer, PIS) share this interface; callers `jax.vmap` it.
    """

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        ...


class AbstractController(eqx.Module):
    r"""How a learned drift is parameterised in time: $u_\theta(t, x)$ for one point.

    The parameters are the module's array leaves (trained with optax); a controller's
    factory takes the dimension and a PRNG key.
    """

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        ...
