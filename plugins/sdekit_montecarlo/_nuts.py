import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray
from numpyro.infer.hmc import hmc

from sdekit import AbstractSampler, AbstractTarget, Samples

from ._checks import check_int, check_positive


class NUTS(AbstractSampler):
    r"""The No-U-Turn sampler (numpyro's NUTS kernel on $-\log\gamma$ as `potential_fn`).

    `chains` chains, vectorised with `jax.vmap`, each started at
    $\mathcal N(0, \text{init\_scale}^2 I)$ and adapted for `num_warmup` iterations
    (step size by dual averaging to `target_accept`, diagonal mass matrix), then run for
    $\lceil n / \text{chains} \rceil$ iterations; the `n` samples returned interleave the
    chains. MCMC has no proposal density, so `log_weights` is `None`.

    Cost: one gradient of $\log\gamma$ per leapfrog step (numpyro's `num_steps`), counted
    over warm-up and sampling, plus one at each chain's start; `sample_with_stats` returns
    it as `target_evaluations`, with the mean acceptance probability and the number of
    divergent transitions.
    """

    target: AbstractTarget
    num_warmup: int = eqx.field(static=True)
    chains: int = eqx.field(static=True)
    init_scale: float
    target_accept: float
    max_tree_depth: int = eqx.field(static=True)

    def _chain(self, key: PRNGKeyArray, iterations: int):
        init_kernel, sample_kernel = hmc(potential_fn=lambda x: -self.target.log_prob(x), algo="NUTS")
        k_init, k_run = jax.random.split(key)
        x0 = self.init_scale * jax.random.normal(k_init, (self.target.dim,))
        state = init_kernel(
            x0, self.num_warmup, target_accept_prob=self.target_accept,
            max_tree_depth=self.max_tree_depth, rng_key=k_run,
        )

        def step(state, _):
            state = sample_kernel(state)
            return state, (state.z, state.num_steps, state.accept_prob, state.diverging)

        _, (z, num_steps, accept, diverging) = jax.lax.scan(
            step, state, None, length=self.num_warmup + iterations
        )
        after = slice(self.num_warmup, None)
        return z[after], jnp.sum(num_steps) + 1, jnp.mean(accept[after]), jnp.sum(diverging[after])

    @eqx.filter_jit
    def _run(self, key: PRNGKeyArray, n: int) -> tuple[Array, Int[Array, ""], Array, Array]:
        iterations = -(-n // self.chains)
        keys = jax.random.split(key, self.chains)
        z, evals, accept, diverging = jax.vmap(lambda k: self._chain(k, iterations))(keys)
        x = jnp.swapaxes(z, 0, 1).reshape(-1, self.target.dim)[:n]  # interleave the chains
        return x, jnp.sum(evals), jnp.mean(accept), jnp.sum(diverging)

    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        return self.sample_with_stats(key, n)[0]

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, Array]]:
        """`n` samples and `{"target_evaluations", "accept_prob", "divergences"}`."""
        x, evals, accept, diverging = self._run(key, n)
        stats = {"target_evaluations": evals, "accept_prob": accept, "divergences": diverging}
        return Samples(x, None), stats


def nuts(
    target: AbstractTarget,
    num_warmup: int = 500,
    chains: int = 4,
    init_scale: float = 1.0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
) -> NUTS:
    """No-U-Turn sampler (numpyro) on the target's log-density: an MCMC baseline, no log-weights.

    `num_warmup`: adaptation iterations per chain; `chains`: vectorised chains (the `n`
    samples are split between them); `init_scale`: std of the chains' normal starting
    points; `target_accept`: dual-averaging target; `max_tree_depth`: at most
    `2**max_tree_depth - 1` leapfrog steps per iteration.
    """
    check_int(0, num_warmup=num_warmup)
    check_int(1, chains=chains, max_tree_depth=max_tree_depth)
    check_positive(init_scale=init_scale)
    if not (isinstance(target_accept, float) and 0 < target_accept < 1):
        raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}")
    return NUTS(target, num_warmup, chains, init_scale, target_accept, max_tree_depth)
