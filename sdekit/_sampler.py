import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._process import AbstractProcess
from ._score import AbstractScore
from ._target import AbstractTarget


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
        """`n` samples and their log-weights (`None` when the sampler has none)."""
        ...

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, Any]]:
        """`sample(key, n)` and named statistics of the run (e.g. `target_evaluations`).

        The default has none; samplers that count their cost or adapt override it. The
        statistics must be traceable (arrays, or Python numbers fixed by the sampler and
        `n`): `sdekit.run` compiles this method.
        """
        return self.sample(key, n), {}


class AbstractDiffusionSampler(AbstractSampler):
    """A sampler that simulates a generative process driven by a score.

    Declares its parts, so that diagnostics can examine them: the forward `process`, the
    `score` of its marginals, and the `target` (`None` for a score model without one).
    The Fokker–Planck diagnostics take any sampler of this kind.
    """

    process: eqx.AbstractVar[AbstractProcess]
    score: eqx.AbstractVar[AbstractScore]
    target: eqx.AbstractVar[AbstractTarget | None]

    @abc.abstractmethod
    def sample_from(self, key: PRNGKeyArray, x0: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Run the generative dynamics from given prior draws `x0` (no log-weights)."""


class AbstractPathSampler(AbstractSampler):
    r"""A sampler whose samples end discrete trajectories with exact log-weights.

    It can also run its backward kernels from given points: `backward_log_weights(key, x)`
    are the log-weights of trajectories started at `x` (target samples) and run
    backwards; their mean is the EUBO, an upper bound on $\log Z$.
    """

    @abc.abstractmethod
    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of paths started at target samples `x` and run backwards; their
        mean is the EUBO, an upper bound on $\log Z$."""
        ...


def log_Z_estimate(log_weights: Float[Array, " n"]) -> Array:
    r"""$\log \frac1N \sum_i w_i$: the log of an unbiased estimate of $Z$."""
    return jax.nn.logsumexp(log_weights) - jnp.log(log_weights.shape[0])
