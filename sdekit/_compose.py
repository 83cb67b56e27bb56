"""Build parts from names, and compose them into a sampler."""

import inspect
from typing import Any

import jax
import jax.numpy as jnp

from ._diagnostic import AbstractDiagnostic
from ._errors import CompositionError, PluginError
from ._plugins import PARTS, Entry, registry
from ._process import AbstractProcess
from ._sampler import AbstractSampler
from ._score import AbstractController, AbstractScore
from ._suggest import did_you_mean
from ._target import AbstractTarget, check_target

_BASES = {
    "target": AbstractTarget,
    "process": AbstractProcess,
    "score": AbstractScore,
    "controller": AbstractController,
    "sampler": AbstractSampler,
    "diagnostic": AbstractDiagnostic,
}


def _describe_options(entry: Entry) -> str:
    options = entry.options()
    if not options:
        return "none"
    return ", ".join(
        n if d is inspect.Parameter.empty else f"{n}={d!r}" for n, d in options.items()
    )


def _check_options(entry: Entry, options: dict[str, Any]) -> None:
    """Raise `CompositionError` for an option the factory of `entry` does not take."""
    params = entry.parameters()
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if not unknown:
        return
    hint = "".join(did_you_mean(u, params) for u in unknown)
    raise CompositionError(
        f"{entry.kind} {entry.name!r} has no option {', '.join(map(repr, unknown))}.{hint} "
        f"Its options are: {_describe_options(entry)}"
    )


def entry(kind: str, name: str) -> Entry:
    """The registry entry of `name`; for a target, also of a spec (`file.py:NAME`,
    `package.module:NAME`, `numpyro:file.py:MODEL`), whose factory builds it."""
    if kind == "target":
        from ._target_spec import target_entry  # noqa: PLC0415 - it builds on this module

        return target_entry(name)
    return registry().get(kind, name)


def create(kind: str, name: str, /, **options: Any) -> Any:
    """Build the part registered as `name` of `kind` (`"target"`, `"process"`, …).

    `options` go to the plugin's factory; `sdekit show KIND NAME` lists them. A target may
    also be named by a spec: `path/to/file.py:NAME`, `package.module:NAME` or
    `numpyro:path/to/file.py:MODEL` (see `sdekit.resolve_target`). Raises
    `UnknownNameError` for a name no plugin registers, `CompositionError` for options the
    factory does not take or rejects, and `PluginError` if the factory returns something
    other than the kind's abstract base class.

    ```python
    vp = sdekit.create("process", "vp", schedule="cosine")
    banana = sdekit.create("target", "examples/banana.py:log_prob", dim=2)
    ```
    """
    entry_ = entry(kind, name)
    _check_options(entry_, options)
    params = entry_.parameters()
    missing = [
        n for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in options
    ]
    if missing:
        raise CompositionError(
            f"{kind} {name!r} needs {', '.join(map(repr, missing))}, which has no default; "
            f"give it as an option (its options are: {_describe_options(entry_)})"
        )
    try:
        obj = entry_.factory(**options)
    except (TypeError, ValueError) as e:
        raise CompositionError(f"{kind} {name!r}: {e}") from e
    if not isinstance(obj, _BASES[kind]):
        raise PluginError(
            f"plugin {entry_.plugin!r}: the factory of {kind} {name!r} returned a "
            f"{type(obj).__name__}, not an {_BASES[kind].__name__}. This is a bug in the "
            f"plugin; report it to its authors, or disable it (SDEKIT_DISABLE_PLUGINS="
            f"{entry_.plugin})"
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


def _check_object(kind: str, spec: Any) -> None:
    if not isinstance(spec, _BASES[kind]):
        raise CompositionError(
            f"{kind} must be a registered name, a dict with a 'name', or an "
            f"{_BASES[kind].__name__}; got {type(spec).__name__}"
        )


def _check_spec(kind: str, spec: Spec) -> None:
    """The checks of a part that need not build it: its type, name and option names."""
    if isinstance(spec, (str, dict)):
        name, options = _name_and_options(kind, spec)
        _check_options(entry(kind, name), options)
    else:
        _check_object(kind, spec)


def resolve_part(kind: str, spec: Spec, /, **parts: Any) -> Any:
    """The part `spec` describes: a registered name (or target spec), a
    `{"name": ..., **options}` dict, or an object of the kind's base class (returned as is).

    The one place where parts are parsed: `compose` and every factory that takes parts
    call it, so a factory works on its own (`pis(target="funnel")`). `parts` are the parts
    already built (`target`, `process`, …); those the factory takes are passed to it.
    A target is checked with `check_target`, unless it is an object holding traced arrays
    (a part built inside `jax.jit`, where values cannot be checked); a score or
    controller, when a target is among `parts`, with `check_dims`.

    ```python
    process = sdekit.resolve_part("process", process)          # "vp", {...} or an object
    score = sdekit.resolve_part("score", "exact", target=target, process=process)
    ```
    """
    if isinstance(spec, (str, dict)):
        name, options = _name_and_options(kind, spec)
        params = entry(kind, name).parameters()
        injected = {k: v for k, v in parts.items() if k in params and k not in options}
        obj = create(kind, name, **injected, **options)
    else:
        _check_object(kind, spec)
        obj = spec
    if kind == "target" and not _holds_tracers(obj):
        check_target(obj)
    elif kind in ("score", "controller") and isinstance(parts.get("target"), AbstractTarget):
        check_dims(obj, parts["target"].dim, kind)
    return obj


def _holds_tracers(obj: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(obj))


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
    entry = registry().get("sampler", sampler_name)
    params = entry.parameters()
    given = {"target": target, "process": process, "score": score, "controller": controller}
    # Everything that can be checked without building a part is checked first.
    overlap = sorted(set(sampler_options) & set(PARTS))
    if overlap:
        raise CompositionError(
            f"give {', '.join(overlap)} as {'parts' if len(overlap) > 1 else 'a part'} "
            f"(compose(..., {overlap[0]}=...)), not as an option of sampler {sampler_name!r}"
        )
    _check_options(entry, sampler_options)
    takes = [k for k in PARTS if k in params]
    for kind in PARTS:
        if given[kind] is not None and kind not in params:
            raise CompositionError(
                f"sampler {sampler_name!r} does not take a {kind} (it takes: "
                f"{', '.join(takes) or 'none'}); leave {kind} out or choose another sampler"
            )
    for kind in takes:
        if given[kind] is not None:
            _check_spec(kind, given[kind])
        elif params[kind].default is inspect.Parameter.empty:
            raise CompositionError(f"sampler {sampler_name!r} needs a {kind}; give {kind}=...")
    # the target and process are built once here; the fields (score, controller) are built
    # by the sampler from them, since it knows the space a field acts on
    parts: dict[str, Any] = {}
    for kind in takes:
        spec = given[kind] if given[kind] is not None else params[kind].default
        if spec is not None:
            parts[kind] = resolve_part(kind, spec, **parts) if kind in ("target", "process") else spec
    return create("sampler", sampler_name, **parts, **sampler_options)


def check_dims(field: AbstractScore | AbstractController, dim: int, what: str) -> None:
    """Raise `CompositionError` unless `field(t, x)` maps `(dim,)` to `(dim,)`.

    Only shapes are computed (`jax.eval_shape`), so this costs no compilation.
    """
    name = type(field).__name__
    try:
        out = jax.eval_shape(field, jnp.asarray(0.5), jnp.zeros(dim))
    except Exception as e:  # noqa: BLE001
        raise CompositionError(
            f"{what} {name} fails on a point of shape ({dim},), the target's dimension: "
            f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0].rstrip('.')}. Was it built "
            f"for another dimension? Give a {what} for dimension {dim}"
        ) from e
    shape = getattr(out, "shape", None)
    if shape != (dim,):
        raise CompositionError(
            f"{what} {name} returns shape {shape} for a point of shape ({dim},); expected "
            f"({dim},), since the target has dimension {dim}. Was it built for another "
            f"dimension? Give a {what} for dimension {dim}"
        )
