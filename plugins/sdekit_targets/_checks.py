"""Eager validation of target options: every failure is a `ValueError` naming the value."""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_dim(dim, name: str = "dim", minimum: int = 1) -> int:
    """`dim` as a Python int, or a `ValueError` unless it is an integer >= `minimum`."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {dim!r}")
    if dim < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {dim!r}")
    return int(dim)


def check_real(value, name: str) -> float:
    """A finite real number as a Python float."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return out


def check_positive(value, name: str) -> float:
    out = check_real(value, name)
    if not out > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out


def is_concrete(x) -> bool:
    """False for arrays being traced (a target built inside `jit`): value checks are skipped."""
    return not isinstance(x, jax.core.Tracer)


def as_array(value, name: str) -> jax.Array:
    """`value` as a float JAX array, or a `ValueError` if it is not numeric."""
    if is_concrete(value):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {value!r}")
    return jnp.asarray(value, dtype=float)


def shape_error(name: str, value, expected: str) -> ValueError:
    shape = tuple(np.shape(value))
    return ValueError(f"{name} must have shape {expected}, got shape {shape}: {_short(value)}")


def check_all_positive(arr: jax.Array, name: str, value) -> None:
    if is_concrete(arr) and not bool(jnp.all(arr > 0)):
        raise ValueError(f"{name} must be positive, got {_short(value)}")


def cholesky(covs: jax.Array, name: str, value) -> jax.Array:
    """Lower Cholesky factors of `(..., d, d)` covariances, checked symmetric positive definite."""
    if is_concrete(covs):
        c = np.asarray(covs, dtype=np.float64).reshape((-1,) + covs.shape[-2:])
        for k, ck in enumerate(c):
            where = f"{name}" if covs.ndim == 2 else f"{name}[{k}] (component {k})"
            if not np.allclose(ck, ck.T, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(ck).max())):
                raise ValueError(f"{where} must be symmetric, got {_short(ck)}")
            try:
                np.linalg.cholesky(ck)
            except np.linalg.LinAlgError:
                raise ValueError(f"{where} must be positive definite, got {_short(ck)}") from None
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    return jnp.linalg.cholesky(covs)


def _short(value) -> str:
    text = repr(np.asarray(value).tolist()) if is_concrete(value) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
