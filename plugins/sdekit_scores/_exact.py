from jaxtyping import Array, Float, ScalarLike

from sdekit import AbstractProcess, AbstractScore, AbstractTarget, GaussianMixture


class ExactMixtureScore(AbstractScore):
    r"""$\nabla_x \log p_t(x)$ in closed form for a Gaussian-mixture $\pi$.

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

    def log_prob(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, ""]:
        r"""$\log p_t(x)$, exact."""
        return self.mixture.log_prob_transformed(*self.process.marginal(t), x)


def exact_score(target: AbstractTarget, process: AbstractProcess) -> ExactMixtureScore:
    """Exact score of a Gaussian-mixture target (gaussian, gmm, gmm40) under the process."""
    mixture = target.mixture
    if mixture is None:
        raise ValueError(
            f"target {type(target).__name__} is not a Gaussian mixture, so it has no exact "
            "score; choose another score"
        )
    return ExactMixtureScore(mixture, process)


