"""Any NumPyro model as a target over its unconstrained latent space."""

import sys
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

import sdekit
from sdekit import AbstractTarget, TargetError


def _name(model: Callable) -> str:
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", type(model).__name__)


def _trace(model: Callable, args: tuple, kwargs: dict) -> dict:
    seeded = numpyro.handlers.seed(model, jax.random.PRNGKey(0))
    return numpyro.handlers.trace(seeded).get_trace(*args, **kwargs)


def _runs_in_float64(model: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether one run of the model succeeds with float64 arithmetic (`jax.enable_x64`)."""
    with jax.enable_x64(True):
        try:
            _trace(model, args, kwargs)
        except Exception:  # noqa: BLE001 - any failure: float32 is not the only cause
            return False
    return True


def _hint(model: Callable, args: tuple, kwargs: dict, e: Exception) -> str:
    """What to try after the model failed with `e`: its data, or float64."""
    if isinstance(e, TypeError):
        return (". Does it get its data? (model_args/model_kwargs; on the command line a "
                "`data` dict in its file, or --set target.data=NAME)")
    if jnp.zeros(()).dtype != jnp.float64 and _runs_in_float64(model, args, kwargs):
        return (". It runs in float64, so float32 is the likely cause (e.g. a jitter or "
                "scale below float32's resolution): run with JAX_ENABLE_X64=1")
    return ""


def _latent_values(model: Callable, args: tuple, kwargs: dict) -> dict[str, Array]:
    """The latent sites' values in one run of the model (a prior draw); `TargetError` for a
    model that fails to run or has discrete latent sites."""
    name = _name(model)
    try:
        trace = _trace(model, args, kwargs)
    except Exception as e:
        raise TargetError(
            f"NumPyro model {name!r} failed when run with its data: {type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0].rstrip('. ')}{_hint(model, args, kwargs, e)}"
        ) from e
    latent = {k: s for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    discrete = [k for k, s in latent.items() if getattr(s["fn"], "is_discrete", False)]
    if discrete:
        raise TargetError(
            f"NumPyro model {name!r} has discrete latent site(s) {', '.join(map(repr, discrete))}; "
            f"diffusion samplers need continuous latent variables. Marginalise them out "
            f"(e.g. a mixture via dist.MixtureSameFamily), or observe them (obs=...)"
        )
    if not latent:
        raise TargetError(f"NumPyro model {name!r} has no latent sample sites: nothing to sample")
    return {k: s["value"] for k, s in latent.items()}


class NumPyroTarget(AbstractTarget):
    r"""A NumPyro model as a target on the unconstrained space of its latent sites.

    `log_prob(z)` is minus NumPyro's potential energy: the log joint density of the
    latent sites mapped to their supports by NumPyro's bijections **plus** the
    log-Jacobian of those maps. So $\gamma$ integrates to the model's evidence
    $p(\text{data})$, and the $\log\hat Z$ of a sampler estimates the log evidence.

    Points are the unconstrained latent values flattened and concatenated in the order
    of `site_names` (sorted), each site row-major. `sites(x)` maps a batch of points to
    the constrained values of every latent and deterministic site; `unconstrain(values)`
    is its inverse on the latent sites.

    **Arguments:** `model` (a NumPyro model function), `model_args`, `model_kwargs` (its
    data, as `numpyro.infer.MCMC.run` would get them), `log_Z` (the log evidence, if known).
    """

    model: Callable = eqx.field(static=True)
    model_args: tuple
    model_kwargs: dict
    dim: int = eqx.field(static=True)
    site_names: tuple[str, ...] = eqx.field(static=True)
    unravel: Callable[[Array], dict] = eqx.field(static=True)
    _log_Z: float | None = eqx.field(static=True)

    def __init__(self, model: Callable, model_args: tuple = (), model_kwargs: dict | None = None,
                 *, log_Z: float | None = None):
        if not callable(model):
            raise TargetError(f"model must be a NumPyro model function, got {model!r}")
        model_args, model_kwargs = tuple(model_args), dict(model_kwargs or {})
        values = _latent_values(model, model_args, model_kwargs)
        # The unconstrained layout (NumPyro's bijections); the values themselves do not matter.
        z = unconstrain_fn(model, model_args, model_kwargs, values)
        flat, self.unravel = ravel_pytree(z)
        self.model, self.model_args, self.model_kwargs = model, model_args, model_kwargs
        self.dim = int(flat.shape[0])
        self.site_names = tuple(sorted(z))
        self._log_Z = log_Z

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return -potential_energy(self.model, self.model_args, self.model_kwargs, self.unravel(x))

    @property
    def log_Z(self) -> float | None:
        return self._log_Z

    @eqx.filter_jit
    def sites(self, x: Float[Array, "n d"]) -> dict[str, Array]:
        """Constrained values of every latent and deterministic site for a batch of points,
        leading axis the points."""

        def one(z):
            return constrain_fn(self.model, self.model_args, self.model_kwargs, self.unravel(z),
                                return_deterministic=True)

        return jax.vmap(one)(x)

    @eqx.filter_jit
    def unconstrain(self, values: dict[str, Array]) -> Float[Array, "n d"]:
        """Points for a batch of constrained latent-site values (leading axis the points):
        the inverse of `sites` on the latent sites."""

        def one(v):
            z = unconstrain_fn(self.model, self.model_args, self.model_kwargs, v)
            return ravel_pytree(z)[0]

        return jax.vmap(one)({k: jnp.asarray(values[k]) for k in self.site_names})


def _module_data(model: Callable, data: str | None, spec: str) -> PyTree:
    """The model's keyword arguments: the object `data` names in the model's module, or by
    convention `<model>_data`, else `data`; a dict, or a function returning one."""
    module = sys.modules.get(getattr(model, "__module__", ""), None)
    if data is not None and ":" in data:
        obj = sdekit.load_object(data)
    elif data is not None:
        if module is None or not hasattr(module, data):
            raise TargetError(f"data {data!r}: the module of model {spec!r} has no {data!r}")
        obj = getattr(module, data)
    else:
        candidates = [f"{_name(model)}_data", "data"]
        found = [c for c in candidates if module is not None and hasattr(module, c)]
        if not found:
            return {}
        data, obj = found[0], getattr(module, found[0])
    if callable(obj):
        obj = obj()
    if not isinstance(obj, dict):
        raise TargetError(
            f"data {data!r} for model {spec!r} is a {type(obj).__name__}; expected a dict of "
            f"the model's keyword arguments (or a function returning one)"
        )
    return obj


def numpyro_target(model: Any, data: Any = None) -> NumPyroTarget:
    """Any NumPyro model as a target on its unconstrained latent space; log Z is its evidence.

    `model`: a NumPyro model function, or a spec `path/to/file.py:model` /
    `package.module:model` (on the command line: `sdekit sample numpyro:path/to/file.py:model`).
    `data`: the model's keyword arguments: a dict; or the name of a dict (or of a function
    returning one) in the model's module, or a spec `file.py:name`. By default, for a
    model from a spec, `<model>_data` if the module defines it, else `data`, else none.
    """
    from_spec = isinstance(model, str)
    spec = model if from_spec else _name(model)
    if from_spec:
        model = sdekit.load_object(model)
    if data is not None and not isinstance(data, (dict, str)):
        raise ValueError(f"data must be a dict or a name, got {type(data).__name__} {data!r}")
    if isinstance(data, dict):
        kwargs = data
    elif data is None and not from_spec:
        kwargs = {}
    else:
        kwargs = _module_data(model, data, spec)
    return NumPyroTarget(model, model_kwargs=kwargs)
