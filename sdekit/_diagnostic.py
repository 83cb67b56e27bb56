import abc
from collections.abc import Mapping
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

    def cost(
        self,
        run_seconds: Mapping[str, float],
        *,
        target: AbstractTarget | None = None,
        sampler: AbstractSampler | None = None,
        samples: Samples | None = None,
    ) -> float:
        """The seconds `__call__` would take, about and at most, with the same arguments.

        `run_seconds` holds the run's own timings (`train_seconds`, `compile_seconds`,
        `sample_seconds`), a measure of this machine's speed. A run whose diagnostics
        have a time budget (`sdekit.run`'s `diagnostic_budget`) starts this diagnostic
        only if its cost fits in what is left. The default, 0, suits a diagnostic whose
        cost is negligible: it is started while any budget is left.
        """
        return 0.0

    def plot(self, values: dict[str, Any]) -> "Figure | None":
        """A matplotlib figure of `values` (what `__call__` returned), or `None` (the default).

        `sdekit diagnose` saves it as `NAME.png` beside `diagnostics.json`.
        """
        return None
