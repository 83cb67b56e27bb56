import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from sdekit import AbstractTarget

from ._checks import check_dim, check_positive


class Funnel(AbstractTarget):
    r"""Neal's funnel: $x_0 \sim \mathcal N(0, 3^2)$, $x_{1..d-1} \mid x_0 \sim \mathcal N(0, e^{x_0})$; $\log Z = 0$.

    A normalised density with exact samples; the conditional *variance* of
    $x_{1..d-1}$ is $e^{x_0}$ (std $e^{x_0/2}$).

    **Arguments:** `dim` (default 10, at least 2), `scale`: the std of $x_0$ (default 3).
    """

    dim: int = eqx.field(static=True)
    scale: float

    def __init__(self, dim: int = 10, scale: float = 3.0):
        self.dim = check_dim(dim, minimum=2)
        self.scale = check_positive(scale, "scale")

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        x0, rest = x[0], x[1:]
        half_log_2pi = 0.5 * jnp.log(2 * jnp.pi)
        lp0 = -0.5 * (x0 / self.scale) ** 2 - jnp.log(self.scale) - half_log_2pi
        lp_rest = -0.5 * jnp.sum(rest**2) * jnp.exp(-x0) - (self.dim - 1) * (0.5 * x0 + half_log_2pi)
        return lp0 + lp_rest

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        k0, k_rest = jax.random.split(key)
        x0 = self.scale * jax.random.normal(k0, (n, 1))
        rest = jnp.exp(0.5 * x0) * jax.random.normal(k_rest, (n, self.dim - 1))
        return jnp.concatenate([x0, rest], axis=1)

    @property
    def log_Z(self) -> float:
        return 0.0
