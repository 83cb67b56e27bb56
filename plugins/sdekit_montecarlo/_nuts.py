import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray
from numpyro.infer.hmc import hmc

import sdekit
from sdekit import AbstractSampler, AbstractTarget, Samples

from ._checks import check_int, check_positive


class NUTS(AbstractSampler):
    r"""No-U-Turn sampler (numpyro) on the target's log-density: an MCMC baseline, no log-weights.

    numpyro's NUTS kernel on $-\log\gamma$ as `potential_fn`. `num_warmup`: adaptation
    iterations per chain; `chains`: vectorised chains (the `n` samples are split between
    them); `init_scale`: std of the chains' normal starting points; `target_accept`:
    dual-averaging target; `max_tree_depth`: at most `2**max_tree_depth - 1` leapfrog
    steps per iteration; `thinning`: iterations per kept sample (every `thinning`-th
    state after warm-up is returned). `NUTS(target="funnel")` works alone.

    `chains` chains, vectorised with `jax.vmap`, each started at
    $\mathcal N(0, \text{init\_scale}^2 I)$ and adapted for `num_warmup` iterations
    (step size by dual averaging to `target_accept`, diagonal mass matrix), then run for
    `thinning` $\times \lceil n / \text{chains} \rceil$ iterations of which every `thinning`-th
    state is kept; the `n` samples returned interleave the chains. Only the kept states
    are stored, so memory does not grow with `thinning`. MCMC has no proposal density, so
    `log_weights` is `None`.

    Cost: one gradient of $\log\gamma$ per leapfrog step (numpyro's `num_steps`), counted
    over warm-up and sampling, plus one at each chain's start; `sample_with_stats` returns
    it as `target_evaluations` (`warmup_evaluations`: the part spent in warm-up, starts
    included), with the mean acceptance probability and the number of divergent
    transitions after warm-up. The cost per iteration depends on the adapted step size,
    so a run at a given budget of evaluations is chosen from a pilot run (see
    `benchmarks/diffusion_samplers.py`).
    """

    target: AbstractTarget
    num_warmup: int = eqx.field(static=True)
    chains: int = eqx.field(static=True)
    init_scale: float
    target_accept: float
    max_tree_depth: int = eqx.field(static=True)
    thinning: int = eqx.field(static=True, default=1)

    def __init__(
        self,
        target: AbstractTarget | str | dict,
        num_warmup: int = 500,
        chains: int = 4,
        init_scale: float = 1.0,
        target_accept: float = 0.8,
        max_tree_depth: int = 10,
        thinning: int = 1,
    ):
        target = sdekit.resolve_part("target", target)
        check_int(0, num_warmup=num_warmup)
        check_int(1, chains=chains, max_tree_depth=max_tree_depth, thinning=thinning)
        check_positive(init_scale=init_scale)
        if not (isinstance(target_accept, float) and 0 < target_accept < 1):
            raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}")
        self.target, self.num_warmup, self.chains, self.init_scale = target, num_warmup, chains, init_scale
        self.target_accept, self.max_tree_depth, self.thinning = target_accept, max_tree_depth, thinning

    def _chain(self, key: PRNGKeyArray, kept: int):
        init_kernel, sample_kernel = hmc(potential_fn=lambda x: -self.target.log_prob(x), algo="NUTS")
        k_init, k_run = jax.random.split(key)
        x0 = self.init_scale * jax.random.normal(k_init, (self.target.dim,))
        state = init_kernel(
            x0, self.num_warmup, target_accept_prob=self.target_accept,
            max_tree_depth=self.max_tree_depth, rng_key=k_run,
        )
        zero = jnp.zeros((), jnp.int32)

        def step(carry, _):
            state, evals, accept, diverging = carry
            state = sample_kernel(state)
            return (state, evals + state.num_steps, accept + state.accept_prob,
                    diverging + state.diverging), None

        start = (state, zero + 1, jnp.zeros(()), zero)
        (state, warmup_evals, _, _), _ = jax.lax.scan(step, start, None, length=self.num_warmup)

        def keep(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=self.thinning)
            return carry, carry[0].z

        (_, evals, accept, diverging), z = jax.lax.scan(
            keep, (state, warmup_evals, jnp.zeros(()), zero), None, length=kept
        )
        return z, evals, warmup_evals, accept / (kept * self.thinning), diverging

    @eqx.filter_jit
    def _run(self, key: PRNGKeyArray, n: int):
        kept = -(-n // self.chains)
        keys = jax.random.split(key, self.chains)
        z, evals, warmup, accept, diverging = jax.vmap(lambda k: self._chain(k, kept))(keys)
        x = jnp.swapaxes(z, 0, 1).reshape(-1, self.target.dim)[:n]  # interleave the chains
        return x, jnp.sum(evals), jnp.sum(warmup), jnp.mean(accept), jnp.sum(diverging)

    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        return self.sample_with_stats(key, n)[0]

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, Array]]:
        """`n` samples and `{"target_evaluations", "warmup_evaluations", "accept_prob", "divergences"}`."""
        x, evals, warmup, accept, diverging = self._run(key, n)
        stats = {"target_evaluations": evals, "warmup_evaluations": warmup,
                 "accept_prob": accept, "divergences": diverging}
        return Samples(x, None), stats


nuts = NUTS
"""The registered factory: `NUTS` itself."""
