"""Data for score matching: built-in 2-d data sets, and arrays from `.npy`/`.npz` files.

The "blob", "checker" and "circles" sets are those of the ODE–SDE gap paper (paper 001 of
REPRODUCTIONS.md); "moons" and "swiss-roll" are the usual toy sets. They are data sets,
not targets: they have no density, only a sampler.
"""

import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from sdekit import io as sio

__all__ = ["DATASETS", "dataset", "datasets", "load_data"]

_BLOB_MEANS = 0.65 * np.array(  # NumPy: no JAX computation at import
    [[2, 2], [2, -2], [-2, 2], [-2, -2], [0, 0], [4, 0], [-4, 0], [0, 4], [0, -4]], dtype=float
)


def blob(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""Nine equal Gaussians, means $(\pm2,\pm2)$, $(0,0)$, $(\pm4,0)$, $(0,\pm4)$, covariance
    $0.2 I$, all scaled by $0.65$."""
    k1, k2 = jax.random.split(key)
    comp = jax.random.randint(k1, (n,), 0, 9)
    return jnp.asarray(_BLOB_MEANS)[comp] + 0.65 * jnp.sqrt(0.2) * jax.random.normal(k2, (n, 2))


def checker(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""Uniform on the 8 squares $(i, j)$, $i + j$ even, of a $4\times4$ checkerboard over
    $[-\frac12, \frac12]^2$, scaled by 6 (so on $[-3, 3]^2$, squares of side $1.5$)."""
    k1, k2 = jax.random.split(key)
    cells = jnp.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], float)
    comp = jax.random.randint(k1, (n,), 0, 8)
    u = jax.random.uniform(k2, (n, 2))
    return 6.0 * ((cells[comp] + u) / 4 - 0.5)


def circles(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""Two rings, equally likely: radii $\sim\mathcal N(0.65, 0.1^2)$ and
    $\mathcal N(1.4, 0.1^2)$, uniform angle, scaled by 2."""
    k1, k2, k3 = jax.random.split(key, 3)
    centre = jnp.where(jax.random.bernoulli(k1, 0.5, (n,)), 1.4, 0.65)
    r = centre + 0.1 * jax.random.normal(k2, (n,))
    angle = jax.random.uniform(k3, (n,), maxval=2 * jnp.pi)
    return 2.0 * r[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)


def moons(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""Two interleaved half circles (scikit-learn's `make_moons`), noise std $0.1$, centred
    at the origin and scaled by 2."""
    k1, k2, k3 = jax.random.split(key, 3)
    upper = jax.random.bernoulli(k1, 0.5, (n,))
    angle = jax.random.uniform(k2, (n,), maxval=jnp.pi)
    x = jnp.where(upper, jnp.cos(angle), 1 - jnp.cos(angle))
    y = jnp.where(upper, jnp.sin(angle), 0.5 - jnp.sin(angle))
    pts = jnp.stack([x - 0.5, y - 0.25], axis=1) + 0.1 * jax.random.normal(k3, (n, 2))
    return 2.0 * pts


def swiss_roll(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""A 2-d swiss roll: $\tau\sim U[\frac32\pi, \frac92\pi]$, $(\tau\cos\tau, \tau\sin\tau)/5$,
    plus noise of std $0.1$."""
    k1, k2 = jax.random.split(key)
    tau = 1.5 * jnp.pi * (1 + 2 * jax.random.uniform(k1, (n,)))
    pts = jnp.stack([tau * jnp.cos(tau), tau * jnp.sin(tau)], axis=1) / 5
    return pts + 0.1 * jax.random.normal(k2, (n, 2))


#: The built-in data sets: name -> `fn(key, n) -> (n, 2) array`.
DATASETS: dict[str, Callable[[PRNGKeyArray, int], Array]] = {
    "blob": blob,
    "checker": checker,
    "circles": circles,
    "moons": moons,
    "swiss-roll": swiss_roll,
}


def datasets() -> dict[str, str]:
    """The built-in data sets: name -> one-line description."""
    return {name: " ".join(fn.__doc__.split()) for name, fn in DATASETS.items()}


def dataset(name: str, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """`n` points of the built-in data set `name` (see `datasets()`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; the built-in ones are {', '.join(DATASETS)}")
    if isinstance(n, bool) or not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return jax.jit(DATASETS[name], static_argnums=1)(key, n)


def load_data(path: str | os.PathLike) -> np.ndarray:
    """The `(N, d)` array of a `.npy` file, or of an `.npz` file's array `x` (or its only array).

    Read without unpickling. Raises `ValueError` naming the file unless the array is real,
    finite, two-dimensional with at least two rows.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: data files must end in .npy or .npz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        arrays = sio.load_npz(path) if path.suffix == ".npz" else {"x": np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable {path.suffix} array file ({e})") from e
    if "x" in arrays:
        x = arrays["x"]
    elif len(arrays) == 1:
        (x,) = arrays.values()
    else:
        raise ValueError(
            f"{path}: an .npz file needs an array named 'x' or exactly one array; "
            f"it holds {', '.join(arrays) or 'none'}"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{path}: expected a real array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{path}: expected an (N, d) array with N >= 2 rows, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise ValueError(f"{path}: {bad} of {x.shape[0]} rows are not finite")
    return x.astype(np.float32 if x.dtype != np.float64 else np.float64)
