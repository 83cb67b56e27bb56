"""Build parts from names, and compose them into a sampler."""

import inspect
from typing import Any

import jax
import jax.numpy as jnp

from ._diagnostic import AbstractDiagnostic
from ._errors import CompositionError, PluginError
from ._plugins import PARTS, registry
from ._process import AbstractProcess
from ._sampler import AbstractSampler
from ._score import AbstractController, AbstractScore
from ._target import AbstractTarget, check_target

_BASES = {
    "target": AbstractTarget,
    "process": AbstractProcess,
    "score": AbstractScore,
    "controller": AbstractController,
    "sampler": AbstractSampler,
    "diagnostic": AbstractDiagnostic,
}


def create(kind: str, name: str, /, **options: Any) -> Any:
    """Build the part registered as `name` of `kind` (`"target"`, `"process"`, …).

    `options` go to the plugin's factory; `sdekit show KIND NAME` lists them.

    ```python
    vp = sdekit.create("process", "vp", schedule="cosine")
    ```
    """
    entry = registry().get(kind, name)
    params = entry.parameters()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        valid = ", ".join(entry.options()) or "none"
        raise CompositionError(
            f"{kind} {name!r} has no option {', '.join(repr(u) for u in unknown)}; "
            f"its options are: {valid}"
        )
    missing = [
        n for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in options
    ]
    if missing:
        raise CompositionError(f"{kind} {name!r} needs {', '.join(map(repr, missing))}")
    try:
        obj = entry.factory(**options)
    except (TypeError, ValueError) as e:
        raise CompositionError(f"{kind} {name!r}: {e}") from e
    if not isinstance(obj, _BASES[kind]):
        raise PluginError(
            f"plugin {entry.plugin!r}: factory of {kind} {name!r} returned "
            f"{type(obj).__name__}, not an {_BASES[kind].__name__}"
        )
    return obj


Spec = str | dict[str, Any] | Any
"""A part given as a registered name, a `{"name": ..., **options}` dict, or an object."""


def _name_and_options(kind: str, spec: Spec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise CompositionError(f"a {kind} given as a dict needs a 'name' string, got {spec!r}")
    return name, options


def _resolve(kind: str, spec: Spec, parts: dict[str, Any]) -> Any:
    """Build a part from a name or a dict, passing it the composed parts it takes."""
    if not isinstance(spec, (str, dict)):
        if not isinstance(spec, _BASES[kind]):
            raise CompositionError(
                f"{kind} must be a registered name, a dict with a 'name', or an "
                f"{_BASES[kind].__name__}; got {type(spec).__name__}"
            )
        return spec
    name, options = _name_and_options(kind, spec)
    params = registry().get(kind, name).parameters()
    injected = {k: v for k, v in parts.items() if k in params and k not in options}
    return create(kind, name, **injected, **options)


def compose(
    target: Spec,
    sampler: str | dict[str, Any] = "reverse-sde",
    *,
    process: Spec | None = None,
    score: Spec | None = None,
    controller: Spec | None = None,
) -> AbstractSampler:
    """Compose a sampler for `target`.

    Each part is a registered name, a `{"name": ..., **options}` dict (the shape of a
    `config.toml` section), or an object. Parts not given take the sampler factory's
    defaults (for `reverse-sde`: the `vp` process and the `exact` score).

    ```python
    sampler = sdekit.compose("gmm40", {"name": "reverse-sde", "steps": 500}, process="ve")
    samples = sampler.sample(jax.random.PRNGKey(0), 10_000)
    ```
    """
    sampler_name, sampler_options = _name_and_options("sampler", sampler)
    params = registry().get("sampler", sampler_name).parameters()
    given = {"target": target, "process": process, "score": score, "controller": controller}
    parts: dict[str, Any] = {}
    for kind in PARTS:
        spec = given[kind]
        if kind not in params:
            if spec is not None:
                takes = ", ".join(k for k in PARTS if k in params) or "none"
                raise CompositionError(
                    f"sampler {sampler_name!r} does not take a {kind} (it takes: {takes})"
                )
            continue
        if spec is None:
            spec = params[kind].default
            if spec is inspect.Parameter.empty:
                raise CompositionError(f"sampler {sampler_name!r} needs a {kind}")
            if spec is None:
                continue
        parts[kind] = _resolve(kind, spec, parts)
        if kind == "target":
            check_target(parts["target"])
    if "score" in parts and "target" in parts:
        check_dims(parts["score"], parts["target"].dim, "score")
    overlap = set(sampler_options) & set(PARTS)
    if overlap:
        raise CompositionError(f"give {', '.join(sorted(overlap))} as parts, not sampler options")
    return create("sampler", sampler_name, **parts, **sampler_options)


def check_dims(field: AbstractScore | AbstractController, dim: int, what: str) -> None:
    """Raise `CompositionError` unless `field(t, x)` maps `(dim,)` to `(dim,)`."""
    try:
        out = jax.eval_shape(field, jnp.asarray(0.5), jnp.zeros(dim))
    except Exception as e:  # noqa: BLE001
        raise CompositionError(
            f"{what} {type(field).__name__} fails on a point of the target's dimension {dim}: {e}"
        ) from e
    if out.shape != (dim,):
        raise CompositionError(
            f"{what} {type(field).__name__} returns shape {out.shape} for a point of shape "
            f"({dim},); the target has dimension {dim}"
        )
