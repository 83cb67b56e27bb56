import abc
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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
        """Whether the target overrides `sample` with an exact sampler."""
        return type(self).sample is not AbstractTarget.sample


def _checked_log_prob(target: AbstractTarget, name: str):
    """`target.log_prob` for one point, raising `TargetError` (while tracing) unless it
    returns a real scalar."""
    d = target.dim

    def log_prob(x):
        try:
            out = target.log_prob(x)
        except TargetError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here is the user's log_prob failing
            if type(e).__name__ == "EquinoxRuntimeError":  # its own check, e.g. eqx.error_if
                raise TargetError(
                    f"{name}.log_prob raised an error at the test points (the origin and "
                    f"standard-normal draws in dimension {d}): {_error_text(e)}"
                ) from e
            raise TargetError(
                f"{name}.log_prob fails on one point of shape ({d},) under jax.jit, vmap and "
                f"grad (as samplers call it): {_error_text(e)}. It must be written with "
                f"jax.numpy, without Python `if`/`float()` on array values"
            ) from e
        shape, dtype = jnp.shape(out), jnp.result_type(out)
        if shape != ():
            hint = (
                ". Did you forget to sum over the coordinates (e.g. jnp.sum(..., axis=-1))?"
                if shape == (d,) else ""
            )
            raise TargetError(
                f"{name}.log_prob returned shape {shape} for one point of shape ({d},); "
                f"expected a scalar, shape (). log_prob takes one point; sdekit vmaps it over "
                f"batches{hint}"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TargetError(
                f"{name}.log_prob returned dtype {dtype}; expected a real floating-point "
                f"scalar (cast with jnp.asarray(value, dtype=float))"
            )
        return out

    return log_prob


def _evaluate(target: AbstractTarget, points: Array, name: str) -> tuple[Array, Array]:
    return jax.vmap(jax.value_and_grad(_checked_log_prob(target, name)))(points)


# One compilation per target type and shape: later checks of the same kind of target
# (every `compose` runs one) reuse it.
_evaluate_jit = eqx.filter_jit(_evaluate)


def _error_text(e: BaseException) -> str:
    """`Type: first line of the message`; for equinox runtime errors, their own message."""
    lines = str(e).strip().splitlines()
    for line in lines:
        if line.startswith("equinox.EquinoxRuntimeError: "):
            return line.split(": ", 1)[1]
    return f"{type(e).__name__}: {(lines or [''])[0].rstrip('.')}"


def finite_in_float64(target: AbstractTarget, points: Float[Array, "n d"]) -> np.ndarray:
    """Whether `target.log_prob` is finite at each of `points` when evaluated in float64
    (the target's floating-point arrays and the points cast up, `jax.enable_x64`): where a
    value is not finite in float32 but is here, float32 is the cause. All `False` where
    the evaluation itself fails."""
    with jax.enable_x64(True):
        wide = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, target)
        try:
            values = jax.vmap(wide.log_prob)(jnp.asarray(np.asarray(points), jnp.float64))
            return np.isfinite(np.asarray(values))
        except Exception:  # noqa: BLE001 - a failure in float64 says nothing about float32
            return np.zeros(len(points), bool)


def float32_hint(target: AbstractTarget, points: Float[Array, "n d"]) -> str:
    """A clause saying to run with `JAX_ENABLE_X64=1` when `target.log_prob` is finite at
    all `points` in float64 (so float32 is the likely cause of their non-finite values);
    `""` otherwise, and when float64 is already on."""
    if jnp.zeros(()).dtype == jnp.float64 or not finite_in_float64(target, points).all():
        return ""
    return ("; it is finite there in float64, so float32 is the likely cause: run with "
            "JAX_ENABLE_X64=1")


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=4, separator=", ", threshold=8, edgeitems=3)


def check_target(target: AbstractTarget, key: PRNGKeyArray | None = None, n: int = 8) -> None:
    """Raise `TargetError` unless `target` is a well-formed `AbstractTarget`.

    `target.dim` must be a positive int, and `target.log_prob` must return a real scalar
    for one point of shape `(dim,)`, under `jax.jit`, `jax.vmap` and `jax.grad`, with
    finite values and finite gradients at `n` test points: the origin and `n - 1`
    standard-normal draws (`key`, default `PRNGKey(0)`). A value of `-inf` (outside the
    support) is allowed at some of them, but not at all; `nan` and `+inf` never are.

    `compose` runs it on every target, so a broken target fails at once with a message
    naming the bad value, instead of deep inside a compiled sampler. The evaluation is one
    compiled call, cached per target type and shape.
    """
    dim = _checked_dim(target)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64
    points = jnp.concatenate(
        [jnp.zeros((1, dim), dtype), jax.random.normal(key, (n - 1, dim), dtype)]
    )
    values, grads = _values_and_grads(target, points)
    _check_values(type(target).__name__, points, values, grads,
                  hint=lambda i: float32_hint(target, points[i:i + 1]))


def _checked_dim(target: AbstractTarget) -> int:
    if not isinstance(target, AbstractTarget):
        raise TargetError(
            f"expected an AbstractTarget (a subclass implementing log_prob and setting "
            f"dim), got {type(target).__name__}"
        )
    dim = target.dim
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise TargetError(
            f"{type(target).__name__}.dim is {dim!r}; expected a positive Python int, the "
            f"dimension of the points log_prob takes (declare it "
            f"`dim: int = eqx.field(static=True)`)"
        )
    return int(dim)


def _values_and_grads(target: AbstractTarget, points: Array) -> tuple[np.ndarray, np.ndarray]:
    """`log_prob` and its gradient at `points`: compiled, or eagerly where jit cannot."""
    name, (n, dim) = type(target).__name__, points.shape
    try:
        values, grads = _evaluate_jit(target, points, name)
    except TargetError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a field filter_jit cannot hash: check eagerly
        try:
            values, grads = _evaluate(target, points, name)
        except TargetError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. an eqx.error_if inside log_prob
            raise TargetError(
                f"{name}.log_prob fails at the test points (the origin and {n - 1} "
                f"standard-normal draws in dimension {dim}): {_error_text(e)}"
            ) from e
    return np.asarray(values), np.asarray(grads)


def _check_values(name: str, points: Array, values: np.ndarray, grads: np.ndarray,
                  hint: Callable[[int], str] = lambda i: "") -> None:
    n = len(values)
    where = (
        f"(the test points are the origin and {n - 1} standard-normal draws)" if n > 1
        else "(the test point is the origin)"
    )

    def at(i: int) -> str:
        return f"test point {i}, x = {_fmt(points[i])}"

    for i, v in enumerate(values):
        if np.isnan(v) or v == np.inf:
            raise TargetError(
                f"{name}.log_prob is {v} at {at(i)} {where}; expected a finite log-density "
                f"(or -inf outside the support){hint(i)}. Guard logs, divisions and square "
                f"roots against invalid arguments (e.g. with jnp.where), or check the "
                f"target's parameters"
            )
    finite = np.isfinite(values)
    if not finite.any():
        raise TargetError(
            f"{name}.log_prob is -inf at all {n} test points {where}; expected a finite "
            f"value at some of them. A density whose support misses all of them, or "
            f"that underflows there, cannot be sampled from a standard-normal start; "
            f"compute log_prob in log space (e.g. jax.nn.logsumexp) or rescale the target"
        )
    for i in np.flatnonzero(finite):
        if not np.all(np.isfinite(grads[i])):
            raise TargetError(
                f"the gradient of {name}.log_prob is {_fmt(grads[i])} at {at(i)}, where "
                f"log_prob = {values[i] + 0.0:.6g} {where}; expected a finite gradient wherever "
                f"log_prob is finite (samplers and scores differentiate it). Make log_prob "
                f"smooth there, e.g. jnp.sqrt(x @ x + eps) instead of jnp.linalg.norm(x), "
                f"or jnp.where(safe, f(jnp.where(safe, x, 1.0)), ...) around singularities"
            )
