import abc

import equinox as eqx
from jaxtyping import Array, Float, Scalar, ScalarLike


class AbstractScore(eqx.Module):
    r"""A time-dependent vector field $(t, x) \mapsto \mathbb R^d$ for **one** point.

    The one interface for every field of `(t, x)`: scores
    $s(t, x) \approx \nabla_x \log p_t(x)$ (in the forward time of a process) and drift
    corrections $u(t, x)$ (Föllmer, PIS); callers `jax.vmap` it. Any score can stand where
    a drift correction is expected, and the other way round.
    """

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The field at time `t` and one point `x` of shape `(d,)`."""
        ...


class AbstractController(AbstractScore):
    r"""A field whose parameters are *learned*: a neural network $u_\theta(t, x)$.

    The difference from any other `AbstractScore` is a contract, not a method: a
    controller's factory takes the target (for its dimension and, where used,
    $\nabla\log\gamma$) and a `seed` for its initialisation (`sdekit sample --seed`
    derives it), and `sdekit.train` optimises its floating-point array leaves.
    """


class AbstractPotentialScore(AbstractScore):
    r"""A score that is the gradient of a scalar potential: $s(t, x) = \nabla_x \phi(t, x)$.

    $\phi$ is $\log p_t$ up to a constant in $x$ (the constant may depend on $t$). The
    log-density Fokker–Planck residual needs it.
    """

    @abc.abstractmethod
    def potential(self, t: ScalarLike, x: Float[Array, " d"]) -> Scalar:
        r"""$\phi(t, x)$."""


class AbstractDensityScore(AbstractPotentialScore):
    r"""A score with its exact, normalised log-density $\log p_t(x)$ (an exact mixture score).

    The density-tracking and Girsanov diagnostics use it as ground truth.
    """

    @abc.abstractmethod
    def log_prob(self, t: ScalarLike, x: Float[Array, " d"]) -> Scalar:
        r"""$\log p_t(x)$, normalised."""

    def potential(self, t: ScalarLike, x: Float[Array, " d"]) -> Scalar:
        """`log_prob(t, x)`: the normalised log-density is a potential of the score."""
        return self.log_prob(t, x)
