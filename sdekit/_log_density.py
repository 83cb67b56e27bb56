"""Any Python log-density as a target, and samples as named sites and ArviZ `InferenceData`."""

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._errors import TargetError
from ._sampler import Samples, log_Z_estimate
from ._target import AbstractTarget, check_target


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return repr(name) if name else type(fn).__name__


class LogDensity(AbstractTarget):
    r"""A target from a Python function $\log\gamma$ (build it with `sdekit.target_from_log_prob`).

    **Fields:** `fn` (the log-density, of a flat point or of a pytree position), `dim`,
    `unravel` (flat point to position, `None` for flat points), `name` (for messages).
    """

    fn: Callable[..., Any]
    dim: int = eqx.field(static=True)
    unravel: Callable[[Array], PyTree] | None = eqx.field(static=True)
    name: str = eqx.field(static=True)
    _log_Z: float | None = eqx.field(static=True)

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """`fn` at one point (unravelled into the model's parameters when it has them)."""
        return self.fn(x if self.unravel is None else self.unravel(x))

    @property
    def log_Z(self) -> float | None:
        """The log normalising constant given when the target was made, or `None`."""
        return self._log_Z

    def position(self, x: Float[Array, " d"]) -> PyTree:
        """The position (a pytree shaped like `example`) of one flat point."""
        return x if self.unravel is None else self.unravel(x)

    def sites(self, x: Float[Array, "n d"]) -> dict[str, Array]:
        """Named arrays of a batch of points, leading axis the points: one per leaf of the
        `example` pytree, named by its path (`"a"`, `"a.b"`, `"a[0]"`); empty for flat points."""
        if self.unravel is None:
            return {}
        tree = jax.vmap(self.unravel)(jnp.asarray(x))
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {_path_name(path): leaf for path, leaf in leaves}


def _path_name(path) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return name or "x"


def _flat_example(example: PyTree, dim: int | None, name: str) -> tuple[int, Callable]:
    """The dimension of `example`'s flattened leaves, and the function that restores them."""
    leaves = jax.tree_util.tree_leaves(example)
    if not leaves:
        raise TargetError(f"example for log-density {name} has no array leaves: {example!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(example)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating) and not isinstance(
            leaf, float
        ):
            raise TargetError(
                f"example leaf {_path_name(path)!r} has dtype {jnp.result_type(leaf)}; "
                f"positions are real: give floating-point leaves (e.g. 0.0, jnp.zeros(3))"
            )
    flat, unravel = ravel_pytree(jax.tree.map(jnp.asarray, example))
    if dim is not None and dim != flat.shape[0]:
        raise TargetError(
            f"dim={dim!r} disagrees with example, whose leaves have {flat.shape[0]} "
            f"numbers in all; give one of them"
        )
    return int(flat.shape[0]), unravel


def target_from_log_prob(
    fn: Callable[..., Any],
    dim: int | None = None,
    example: PyTree | None = None,
    *,
    log_Z: float | None = None,
    check: bool = True,
) -> LogDensity:
    r"""A target from any log-density `fn`, of a flat point or of a pytree position.

    - `fn(x) -> scalar` for one point `x` of shape `(dim,)`: give `dim`.
    - `fn(position) -> scalar` for a pytree position (a dict of parameters, say): give an
      `example` position; points are its leaves flattened and concatenated
      (`jax.flatten_util.ravel_pytree`), `dim` is their total size, and `target.sites(x)`
      / `sdekit.to_arviz` restore the names.

    `fn` is unnormalised ($\log\gamma = \log Z + \log\pi$), written with `jax.numpy` so that
    it can be jitted, vmapped and differentiated; it takes **one** point (sdekit vmaps it).
    `log_Z`: the log normalising constant, if known. With `check=True` (the default) the
    target is checked at once by `sdekit.check_target`: a function that returns a non-scalar,
    fails on a point of the declared dimension, or is not finite raises `TargetError` here
    rather than inside a sampler.

    ```python
    target = sdekit.target_from_log_prob(lambda x: -0.5 * x @ x, dim=3)
    target = sdekit.target_from_log_prob(
        lambda p: -0.5 * (p["mu"] ** 2 + jnp.sum(p["z"] ** 2)),
        example={"mu": 0.0, "z": jnp.zeros(4)},
    )
    ```
    """
    if not callable(fn):
        raise TargetError(f"fn must be a callable log-density, got {type(fn).__name__} {fn!r}")
    name = _describe(fn)
    unravel = None
    if example is not None:
        dim, unravel = _flat_example(example, dim, name)
    if dim is None:
        raise TargetError(
            f"log-density {name}: give its dimension (dim=...) or an example position "
            f"(example=...), the pytree its argument is shaped like"
        )
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise TargetError(f"dim must be a positive integer, got {dim!r}")
    target = LogDensity(fn, int(dim), unravel, name.strip("'"), log_Z)
    if check:
        try:
            check_target(target)
        except TargetError as e:
            where = f"dim={int(dim)}" if example is None else "positions shaped like example"
            hint = (f" (is {int(dim)} the dimension of the points it takes?)"
                    if example is None and "fails on one point" in str(e) else "")
            raise TargetError(f"log-density {name} ({where}){hint}: {e}") from e
    return target


# --------------------------------------------------------------------------------------
# named sites and ArviZ

#: Keys of `samples.npz` that a site name must not replace.
RESERVED = ("x", "log_weights")


def named_sites(target: AbstractTarget | None, x: Float[Array, "n d"]) -> dict[str, np.ndarray]:
    """The named arrays of a batch of points `x`, from `target.sites(x)` where the target
    has that method (NumPyro targets: constrained latent and deterministic sites; targets
    from `target_from_log_prob` with an `example`: its leaves); else `{}`."""
    method = getattr(target, "sites", None)
    if method is None:
        return {}
    return {k: np.asarray(v) for k, v in method(jnp.asarray(x)).items()}


def npz_arrays(samples: Samples, target: AbstractTarget | None) -> dict[str, np.ndarray]:
    """What `samples.npz` holds: `x`, `log_weights` (when the sampler gives them) and one
    array per named site of the target (leading axis the samples). A site named `x` or
    `log_weights` is stored as `site:x`, `site:log_weights`."""
    x = np.asarray(samples.x)
    arrays = {"x": x}
    if samples.log_weights is not None:
        arrays["log_weights"] = np.asarray(samples.log_weights)
    for name, value in named_sites(target, x).items():
        arrays[f"site:{name}" if name in RESERVED else name] = value
    return arrays


def _import_arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz announces its refactor
        import arviz

    return arviz


def to_arviz(samples: Samples, target: AbstractTarget | None = None, *,
             key: PRNGKeyArray | None = None):
    r"""`samples` as an ArviZ `InferenceData`: one chain, `n` draws.

    - `posterior`: one variable per named site of `target` (`target.sites(x)`: the
      constrained latent and deterministic sites of a NumPyro model, the leaves of a
      log-density's `example` position), else one variable `x` of shape `(d,)`.
    - `sample_stats`: `log_weights`, where the sampler gives them.
    - `attrs`: `log_Z` ($\log\hat Z$) and `ess` (effective sample size fraction) from the
      log-weights.

    The draws are **weighted**; ArviZ's summaries treat draws as equally weighted. Pass a
    PRNG `key` to resample them (multinomially, by their weights) into `n` equally weighted
    draws first; `sample_stats.log_weights` then holds the log-weight each draw came with.
    """
    az = _import_arviz()
    x = np.asarray(samples.x)
    log_w = None if samples.log_weights is None else np.asarray(samples.log_weights)
    attrs: dict[str, Any] = {"sampler_draws": int(x.shape[0]), "resampled": key is not None}
    if log_w is not None:
        w = jnp.exp(log_w - jax.nn.logsumexp(log_w))
        attrs["log_Z"] = float(log_Z_estimate(jnp.asarray(log_w)))
        attrs["ess"] = float(1.0 / jnp.sum(w**2) / w.shape[0])
    index = np.arange(x.shape[0])
    if key is not None:
        if log_w is None:
            raise ValueError("resampling (key=...) needs log-weights; these samples have none")
        index = np.asarray(jax.random.choice(key, x.shape[0], (x.shape[0],), p=w))
    sites = named_sites(target, x) or {"x": x}
    posterior = {k: v[index][None] for k, v in sites.items()}
    stats = None if log_w is None else {"log_weights": log_w[index][None]}
    return az.from_dict(posterior=posterior, sample_stats=stats, attrs=attrs)
