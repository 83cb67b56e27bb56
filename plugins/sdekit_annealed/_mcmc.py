"""MALA moves between segments (blackjax), with the step size adapted to the acceptance."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

#: The acceptance rate the step size is adapted towards (optimal for MALA in high dimension).
TARGET_ACCEPT = 0.574


def mala_moves(
    key: PRNGKeyArray,
    log_prob: Callable[[Float[Array, " d"]], Scalar],
    x: Float[Array, "n d"],
    step_size: Scalar,
    steps: int,
) -> tuple[Float[Array, "n d"], Scalar, Scalar]:
    r"""`steps` MALA moves of every particle, each leaving the density $\propto e^{\text{log\_prob}}$
    invariant: proposals $y = x + h\nabla\log p(x) + \sqrt{2h}\,\xi$ with the step size $h$,
    accepted by Metropolis–Hastings. Returns the particles, the step size for the next
    call, $h\,e^{\bar a - a^*}$ ($\bar a$ the mean acceptance probability, $a^*$ =
    `TARGET_ACCEPT`), and $\bar a$."""
    # imported here: blackjax computes with JAX when imported, which would start JAX's
    # backend before a multi-process run can be joined (`sdekit.initialize_distributed`)
    from blackjax.mcmc import mala

    kernel = mala.build_kernel()
    state = jax.vmap(lambda p: mala.init(p, log_prob))(x)

    def move(state, k):
        keys = jax.random.split(k, x.shape[0])
        state, info = jax.vmap(lambda k, s: kernel(k, s, log_prob, step_size))(keys, state)
        return state, jnp.mean(info.acceptance_rate)

    state, acceptance = jax.lax.scan(move, state, jax.random.split(key, steps))
    accept = jnp.mean(acceptance)
    return state.position, step_size * jnp.exp(accept - TARGET_ACCEPT), accept
