"""A prioritised replay buffer of sub-trajectories, one ring per segment (SCLD's off-policy
training data)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


class Buffer(eqx.Module):
    r"""`capacity` sub-trajectories per segment and their priorities.

    **Fields:**

    - `paths`: `(S, capacity, L + 1, D)` the states of each stored sub-trajectory.
    - `log_G`: `(S, capacity)` each one's incremental log-weight when last scored, the
      priority; $-\infty$ for empty slots and non-finite paths, which are drawn only when
      too few finite entries are left.
    - `next`: the ring position the next insert starts at (first in, first out).
    """

    paths: Float[Array, "S C L D"]
    log_G: Float[Array, "S C"]
    next: Int[Array, ""]

    @classmethod
    def empty(cls, segments: int, capacity: int, length: int, dim: int) -> "Buffer":
        return cls(jnp.zeros((segments, capacity, length, dim)),
                   jnp.full((segments, capacity), -jnp.inf), jnp.array(0))

    def insert(self, paths: Float[Array, "S n L D"], log_G: Float[Array, "S n"]) -> "Buffer":
        """Store `paths` over the oldest entries; non-finite ones get priority $-\\infty$."""
        n, capacity = paths.shape[1], self.log_G.shape[1]
        slots = (self.next + jnp.arange(n)) % capacity
        finite = jnp.isfinite(log_G) & jnp.all(jnp.isfinite(paths), axis=(2, 3))
        return Buffer(self.paths.at[:, slots].set(paths),
                      self.log_G.at[:, slots].set(jnp.where(finite, log_G, -jnp.inf)),
                      (self.next + n) % capacity)

    def draw(self, key: PRNGKeyArray, m: int) -> Int[Array, "S m"]:
        r"""`m` distinct entries per segment, drawn with probabilities $\propto G$ (without
        replacement: the Gumbel top-$m$ trick)."""
        gumbel = jax.random.gumbel(key, self.log_G.shape)
        return jax.lax.top_k(self.log_G + gumbel, m)[1]

    def take(self, index: Int[Array, "S m"]) -> Float[Array, "S m L D"]:
        return jnp.take_along_axis(self.paths, index[:, :, None, None], axis=1)

    def reprioritise(self, index: Int[Array, "S m"], log_G: Float[Array, "S m"]) -> "Buffer":
        """Priorities of the drawn entries, rescored under the current parameters."""
        rows = jnp.arange(index.shape[0])[:, None]
        log_G = jnp.where(jnp.isfinite(log_G), log_G, -jnp.inf)
        return Buffer(self.paths, self.log_G.at[rows, index].set(log_G), self.next)
