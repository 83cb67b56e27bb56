import abc
from typing import TYPE_CHECKING, Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from ._sampler import AbstractSampler, Samples
from ._target import AbstractTarget

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
        """The diagnostic's named numbers, computed from whichever of `target`, `sampler`
        and `samples` it needs (`{}` when it does not apply); `key` for any randomness."""

    def plot(self, values: dict[str, Any]) -> "Figure | None":
        """A matplotlib figure of `values` (what `__call__` returned), or `None` (the default).

        `sdekit diagnose` saves it as `NAME.png` beside `diagnostics.json`.
        """
        return None
