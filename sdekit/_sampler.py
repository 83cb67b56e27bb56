import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Samples(eqx.Module):
    """What a sampler returns.

    **Fields:**

    - `x`: `(n, d)` samples.
    - `log_weights`: `(n,)` importance log-weights $\\log \\gamma(x) - \\log q(x)$ (for path
      samplers, of the whole discrete trajectory), or `None` where the sampler has no honest
      density for its proposal.
    """

    x: Float[Array, "n d"]
    log_weights: Float[Array, " n"] | None = None


class AbstractSampler(eqx.Module):
    """Draws samples, with log-weights against the target where it can."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        ...


def log_Z_estimate(log_weights: Float[Array, " n"]) -> Array:
    r"""$\log \frac1N \sum_i w_i$: the log of an unbiased estimate of $Z$."""
    return jax.nn.logsumexp(log_weights) - jnp.log(log_weights.shape[0])
