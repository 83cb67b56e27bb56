import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._errors import TargetError
from ._mixture import GaussianMixture


class AbstractTarget(eqx.Module):
    r"""An unnormalised density $\gamma(x) = Z \pi(x)$ on $\mathbb R^d$.

    Subclasses implement `log_prob` for **one** point (callers `jax.vmap` it) and set `dim`.
    Where they are known they also override `sample` (exact samples), `log_Z` and `mixture`
    (an exact Gaussian-mixture representation, which gives exact scores).
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        r"""$\log \gamma(x)$, unnormalised."""

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """`n` exact samples from the normalised target."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    @property
    def log_Z(self) -> float | None:
        """The log normalising constant, where known."""
        return None

    @property
    def mixture(self) -> GaussianMixture | None:
        """The target as a normalised Gaussian mixture, where it is one."""
        return None

    @property
    def has_exact_samples(self) -> bool:
        return type(self).sample is not AbstractTarget.sample


def check_target(target: AbstractTarget, key: PRNGKeyArray | None = None, n: int = 8) -> None:
    """Evaluate `target.log_prob` at a few points and raise `TargetError` if it misbehaves.

    Runs eagerly at composition time, so a broken target fails with a readable message
    instead of deep inside a compiled sampler.
    """
    if not isinstance(target, AbstractTarget):
        raise TargetError(f"expected an AbstractTarget, got {type(target).__name__}")
    if not isinstance(target.dim, int) or target.dim < 1:
        raise TargetError(f"target dim must be a positive int, got {target.dim!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    points = jnp.concatenate([jnp.zeros((1, target.dim)), jax.random.normal(key, (n - 1, target.dim))])
    name = type(target).__name__
    try:
        out = jax.eval_shape(target.log_prob, points[0])
    except Exception as e:  # noqa: BLE001 - any failure here is the user's function failing
        raise TargetError(f"{name}.log_prob fails on an input of shape ({target.dim},): {e}") from e
    if out.shape != ():
        raise TargetError(
            f"{name}.log_prob must return a scalar for one point of shape ({target.dim},), "
            f"got shape {out.shape}"
        )
    values, grads = jax.vmap(jax.value_and_grad(target.log_prob))(points)
    if bool(jnp.any(jnp.isnan(values)) | jnp.any(jnp.isnan(grads))):
        raise TargetError(
            f"{name}.log_prob (or its gradient) is NaN at test points (origin and standard "
            f"normal draws): values {values.tolist()}"
        )
    finite = jnp.isfinite(values) & jnp.all(jnp.isfinite(grads), axis=-1)
    if not bool(jnp.any(finite)):
        raise TargetError(
            f"{name}.log_prob (or its gradient) is not finite at any of {n} test points "
            f"(origin and standard normal draws): values {values.tolist()}"
        )
