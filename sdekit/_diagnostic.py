import abc

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from ._sampler import AbstractSampler, Samples
from ._target import AbstractTarget


class AbstractDiagnostic(eqx.Module):
    """A set of named numbers about a target, a sampler and/or its samples.

    Called with keyword arguments; a diagnostic uses what it needs and returns `{}` when
    it does not apply (for example a sample-quality metric on a target with no exact samples).
    """

    @abc.abstractmethod
    def __call__(
        self,
        key: PRNGKeyArray,
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> dict[str, Array | float]:
        ...
