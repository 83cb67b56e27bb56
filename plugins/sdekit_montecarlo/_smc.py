import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

import sdekit
from sdekit import AbstractSampler, AbstractTarget, Samples, gaussian_log_prob
from sdekit.metrics import unique_fraction

from ._checks import check_int, check_positive


class SMC(AbstractSampler):
    r"""Tempered SMC from N(0, sigma^2 I) to the target (blackjax, HMC moves, fixed schedule); log Z estimate.

    Annealed importance sampling with resampling. `steps`: tempering steps $K$, schedule
    $\beta_k = (k/K)^{\text{schedule\_power}}$; `mcmc_steps` HMC moves of `leapfrog`
    steps per tempering step; `sigma`: std of the initial Gaussian; `step_size`: initial
    HMC step size, then adapted towards `target_accept`. `SMC(target="funnel")` works alone.

    The path $\pi_\beta \propto \mathcal N(x; 0, \sigma^2 I)^{1-\beta}\gamma(x)^\beta$ runs over
    the fixed schedule $\beta_k = (k/K)^p$, $k = 1..K$ (`steps` $K$, `schedule_power` $p$),
    from $N$ draws of $\mathcal N(0, \sigma^2 I)$. Each step of blackjax's tempered SMC
    kernel resamples (systematic), moves every particle by `mcmc_steps` HMC transitions
    (`leapfrog` steps each) that leave $\pi_{\beta_{k-1}}$ invariant, and reweights by
    $(\beta_k - \beta_{k-1})\log(\gamma/\mathcal N(0,\sigma^2 I))$; the increments multiply to
    the estimate $\hat Z$. A last step at $\beta = 1$ (no reweighting) resamples and moves
    the particles under $\pi$ itself. The schedule is fixed (not blackjax's adaptive
    tempering, whose ESS solver had a sign error, blackjax issue #914, fixed in 1.7.1).

    HMC tuning uses only the particles before each step: the diagonal inverse mass matrix
    is their weighted variance, and the step size is multiplied by
    $e^{\bar a - a^*}$ after each step ($\bar a$ the mean acceptance, $a^*$ =
    `target_accept`), starting at `step_size`.

    **Log-weights:** the returned particles are equally weighted, so each carries
    $\log\hat Z$: `sdekit.log_Z_estimate(log_weights)` is the SMC estimate (unbiased for
    $Z$); the ESS of these weights would be 1 by construction and says nothing. So
    `sample_with_stats` reports, as fractions of $N$, `ess`: the ESS of the last
    importance step (the reweighting to $\beta = 1$, before its resampling), `min_ess`: the
    smallest over the $K$ importance steps, and `unique_fraction`: the distinct returned
    particles (duplicates of resampling that the last HMC moves did not separate).

    Cost per step and particle: one value and gradient at the HMC start, `mcmc_steps *
    leapfrog` gradients, one value for the weight: $(K+1)\,N\,(2 + \text{mcmc\_steps}\cdot\text{leapfrog})$
    evaluations of $\log\gamma$ in all (`target_evaluations`).
    """

    target: AbstractTarget
    sigma: float
    step_size: float
    target_accept: float
    schedule_power: float
    steps: int = eqx.field(static=True)
    mcmc_steps: int = eqx.field(static=True)
    leapfrog: int = eqx.field(static=True)

    def __init__(
        self,
        target: AbstractTarget | str | dict,
        steps: int = 100,
        mcmc_steps: int = 2,
        leapfrog: int = 5,
        sigma: float = 1.0,
        step_size: float = 0.2,
        target_accept: float = 0.65,
        schedule_power: float = 4.0,
    ):
        target = sdekit.resolve_part("target", target)
        check_int(1, steps=steps, mcmc_steps=mcmc_steps, leapfrog=leapfrog)
        check_positive(sigma=sigma, step_size=step_size, schedule_power=schedule_power)
        if not (isinstance(target_accept, float) and 0 < target_accept < 1):
            raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}")
        self.target, self.sigma, self.step_size, self.target_accept = target, sigma, step_size, target_accept
        self.schedule_power, self.steps, self.mcmc_steps, self.leapfrog = schedule_power, steps, mcmc_steps, leapfrog

    def _log_prior(self, x: Float[Array, " d"]) -> Scalar:
        return gaussian_log_prob(x, 0.0, self.sigma)

    def _log_ratio(self, x: Float[Array, " d"]) -> Scalar:
        return self.target.log_prob(x) - self._log_prior(x)

    def betas(self) -> Float[Array, " K+1"]:
        """The tempering schedule $\\beta_1, \\dots, \\beta_K = 1$, then 1 again (the last move)."""
        k = jnp.arange(1, self.steps + 1) / self.steps
        return jnp.concatenate([k**self.schedule_power, jnp.ones(1)]).at[-2].set(1.0)

    def target_evaluations(self, n: int) -> int:
        return (self.steps + 1) * n * (2 + self.mcmc_steps * self.leapfrog)

    @eqx.filter_jit
    def _run(self, key: PRNGKeyArray, n: int):
        # imported here: blackjax computes with JAX when imported, which would start JAX's
        # backend before a multi-process run can be joined (`sdekit.initialize_distributed`)
        from blackjax.mcmc import hmc as bj_hmc
        from blackjax.smc import resampling
        from blackjax.smc import tempered as bj_tempered

        move = functools.partial(bj_hmc.build_kernel(), num_integration_steps=self.leapfrog)
        kernel = bj_tempered.build_kernel(
            self._log_prior, self._log_ratio, move, bj_hmc.init, resampling.systematic
        )
        k_init, k_steps = jax.random.split(key)
        state = bj_tempered.init(self.sigma * jax.random.normal(k_init, (n, self.target.dim)))

        def step(carry, inputs):
            state, step_size, log_Z = carry
            beta, k = inputs
            x, w = state.particles, state.weights
            var = jnp.sum(w[:, None] * (x - jnp.sum(w[:, None] * x, axis=0)) ** 2, axis=0)
            params = {"step_size": step_size[None], "inverse_mass_matrix": var[None]}
            state, info = kernel(k, state, self.mcmc_steps, beta, params)
            accept = jnp.mean(info.update_info.acceptance_rate)
            ess = 1.0 / jnp.sum(state.weights**2) / n
            step_size = step_size * jnp.exp(accept - self.target_accept)
            return (state, step_size, log_Z + info.log_likelihood_increment), (accept, ess)

        betas = self.betas()
        keys = jax.random.split(k_steps, betas.shape[0])
        init = (state, jnp.asarray(self.step_size, dtype=float), jnp.zeros(()))
        (state, _, log_Z), (accept, ess) = jax.lax.scan(step, init, (betas, keys))
        # the last scan step moves at beta = 1 without reweighting: its ESS is 1
        return state.particles, log_Z, jnp.mean(accept), ess[-2], jnp.min(ess[:-1])

    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        return self.sample_with_stats(key, n)[0]

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict]:
        """`n` equally weighted particles carrying $\\log\\hat Z$, and `{"target_evaluations",
        "accept_prob", "ess", "min_ess", "unique_fraction"}`."""
        x, log_Z, accept, ess, min_ess = self._run(key, n)
        stats = {"target_evaluations": self.target_evaluations(n), "accept_prob": accept,
                 "ess": ess, "min_ess": min_ess, "unique_fraction": unique_fraction(x)}
        return Samples(x, jnp.full((n,), log_Z)), stats


smc = SMC
"""The registered factory: `SMC` itself."""
