from typing import Any

from jaxtyping import Array, Float, Scalar, ScalarLike

import sdekit
from sdekit import AbstractDensityScore, AbstractProcess, AbstractTarget, GaussianMixture


class ExactMixtureScore(AbstractDensityScore):
    r"""$\nabla_x \log p_t(x)$ in closed form for a Gaussian-mixture $\pi$, with $\log p_t$.

    Under a process with $Y_t \mid Y_0 \sim \mathcal N(a_t Y_0, \sigma_t^2 I)$ the marginal
    $p_t$ is the mixture with components $\mathcal N(a_t\mu_k, a_t^2\Sigma_k + \sigma_t^2 I)$.
    """

    mixture: GaussianMixture
    process: AbstractProcess

    def marginal(self, t: ScalarLike) -> GaussianMixture:
        """The exact marginal $p_t$."""
        return self.mixture.transform(*self.process.marginal(t))

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        # Through the target's fixed eigenbasis: no factorisation per time, even when `t`
        # is batched (an adaptive ODE solver under vmap gives each trajectory its own t).
        return self.mixture.score_transformed(*self.process.marginal(t), x)

    def log_prob(self, t: ScalarLike, x: Float[Array, " d"]) -> Scalar:
        r"""$\log p_t(x)$, exact and normalised."""
        return self.mixture.log_prob_transformed(*self.process.marginal(t), x)


def _no_mixture_message(target: AbstractTarget) -> str:
    others = [n for n in sdekit.registry().names("score") if n != "exact"]
    return (
        f"target {type(target).__name__} is not a Gaussian mixture (its `mixture` property "
        "is None), so it has no exact score. Either implement the target's `mixture` "
        "property, returning an `sdekit.GaussianMixture`, or choose another score "
        f"(registered: {', '.join(map(repr, others)) or 'none besides exact'})"
    )


def exact_score(
    target: AbstractTarget | str | dict[str, Any], process: AbstractProcess | str | dict[str, Any] = "vp"
) -> ExactMixtureScore:
    """Exact score of a Gaussian-mixture target (gaussian, gmm, gmm40) under the process.

    `target` and `process` are parts: registered names, `{"name": ..., **options}` dicts
    or objects. The target must have a `mixture` (an `sdekit.GaussianMixture`).
    """
    target = sdekit.resolve_part("target", target)
    process = sdekit.resolve_part("process", process)
    mixture = target.mixture
    if mixture is None:
        raise ValueError(_no_mixture_message(target))
    return ExactMixtureScore(mixture, process)
