"""Targets named by a spec: a registered name, `path/to/file.py:name`, `package.module:name`
or `numpyro:path/to/file.py:model`.

What the spec names decides how it becomes a target:

- an `AbstractTarget` **instance** (e.g. `target = sdekit.target_from_log_prob(...)` at module
  level) is used as it is; it takes no options;
- an `AbstractTarget` **subclass**, or a **factory** (a callable none of whose parameters is
  a required positional one: every parameter has a default or is keyword-only), is called
  with the options (`--set target.OPTION=VALUE`) and must return an `AbstractTarget`;
- a **log-density** (a callable with exactly one required positional parameter, the point
  `x` of shape `(dim,)`) becomes `sdekit.target_from_log_prob(fn, dim)`: its dimension is the
  required option `dim`, and its other parameters (those with defaults) are options too;
- `numpyro:SPEC` is the NumPyro model SPEC names, through the target registered as
  `numpyro` (the `sdekit_numpyro` plugin): `numpyro:m.py:model` is
  `{"name": "numpyro", "model": "m.py:model"}`.

Files are imported once per modification time, as modules of their own (their directory is
on `sys.path` while they are imported, so they can import their neighbours); a module path is
imported with the working directory on `sys.path`, as `python -m` would. Only a target given
explicitly like this runs user code.
"""

import functools
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._compose import create
from ._errors import CompositionError, SdekitError, TargetError, UnknownNameError
from ._log_density import target_from_log_prob
from ._plugins import Entry, registry
from ._target import AbstractTarget

#: The prefix of a NumPyro model spec, and the registered target it goes to.
NUMPYRO = "numpyro"
#: The plugin name that `sdekit.registry()` reports for user code.
USER_CODE = "(user code)"

_MODULES: dict[tuple[str, int], Any] = {}


def is_spec(name: str) -> bool:
    """Whether `name` is a spec (`location:attribute`) rather than a registered name."""
    return isinstance(name, str) and ":" in name and name not in registry().entries["target"]


def split_spec(spec: str) -> tuple[str, str]:
    """`"path/to/file.py:name"` -> `("path/to/file.py", "name")`; the last `:` separates."""
    location, colon, attribute = spec.rpartition(":")
    if not colon or not location.strip() or not attribute.strip():
        raise TargetError(
            f"target spec {spec!r} must be LOCATION:NAME, with LOCATION a file "
            f"(path/to/file.py) or a module (package.module), and NAME an object in it"
        )
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise TargetError(f"target spec {spec!r}: {attribute!r} is not a Python name")
    return location.strip(), attribute.strip()


def _is_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _import_file(location: str, spec: str) -> Any:
    path = Path(location).expanduser()
    if not path.exists():
        raise TargetError(f"target spec {spec!r}: the file {location} does not exist")
    if not path.is_file():
        raise TargetError(f"target spec {spec!r}: {location} is not a file")
    path = path.resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key in _MODULES:
        return _MODULES[key]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_sdekit_user_{stem}_{abs(hash(key)):x}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"target spec {spec!r}: cannot import {location} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise TargetError(
            f"target spec {spec!r}: importing {location} failed: {type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0]}"
        ) from e
    finally:
        sys.path.remove(str(path.parent))
    _MODULES[key] = module
    return module


def _import_module(location: str, spec: str) -> Any:
    added = "" not in sys.path and "." not in sys.path
    if added:
        sys.path.append("")
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as e:
        if e.name and location.startswith(e.name):
            raise TargetError(
                f"target spec {spec!r}: no module named {e.name!r} (a file is given as "
                f"path/to/file.py:NAME)"
            ) from e
        raise TargetError(f"target spec {spec!r}: importing {location} failed: {e}") from e
    except Exception as e:
        raise TargetError(
            f"target spec {spec!r}: importing {location} failed: {type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0]}"
        ) from e
    finally:
        if added:
            sys.path.remove("")


def load_object(spec: str) -> Any:
    """The object `spec` names: `"path/to/file.py:name"` or `"package.module:name"`
    (`name` may be dotted, `module:obj.attr`). Raises `TargetError` naming what is missing."""
    location, attribute = split_spec(spec)
    module = _import_file(location, spec) if _is_file(location) else _import_module(location, spec)
    obj = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = location if i == 0 else ".".join(attribute.split(".")[:i])
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise TargetError(
                f"target spec {spec!r}: {where} has no {part!r}"
                + (f"; it defines {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
                   if names else "")
            )
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------
# what the named object is


def _required_positional(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _kind_of(obj: Any, spec: str) -> str:
    """`"target"`, `"factory"` or `"log-density"`."""
    if isinstance(obj, AbstractTarget):
        return "target"
    if isinstance(obj, type) and issubclass(obj, AbstractTarget):
        return "factory"
    if not callable(obj):
        raise TargetError(
            f"target spec {spec!r} names a {type(obj).__name__}; expected a log-density "
            f"function, a factory returning an AbstractTarget, or an AbstractTarget"
        )
    required = _required_positional(obj)
    if not required:
        return "factory"
    if len(required) == 1:
        return "log-density"
    raise TargetError(
        f"target spec {spec!r}: {getattr(obj, '__name__', type(obj).__name__)} has "
        f"{len(required)} required positional parameters ({', '.join(required)}); a "
        f"log-density takes one, the point x (give the others defaults: they become "
        f"options), and a factory none (make its options keyword-only or give them defaults)"
    )


def _log_density_signature(fn: Callable) -> inspect.Signature:
    """`dim` (required), `log_Z`, and `fn`'s parameters that have defaults."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("dim", kw, annotation=int),
              inspect.Parameter("log_Z", kw, default=None)]
    own = list(inspect.signature(fn).parameters.values())
    for p in own[1:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("dim", "log_Z"):
            params.append(p.replace(kind=kw))
    return inspect.Signature(params)


def _from_object(obj: Any, kind: str, spec: str, options: dict[str, Any]) -> AbstractTarget:
    if kind == "target":
        if options:
            raise CompositionError(
                f"target {spec!r} is an AbstractTarget object and takes no options; got "
                f"{', '.join(map(repr, options))} (name a factory to pass options)"
            )
        return obj
    if kind == "factory":
        _check_options(spec, inspect.signature(obj), options)
        try:
            target = obj(**options)
        except SdekitError:
            raise
        except (TypeError, ValueError) as e:
            raise CompositionError(f"target {spec!r}: {e}") from e
        if not isinstance(target, AbstractTarget):
            hint = (" (a log-density takes the point x as its one required positional "
                    "parameter)" if callable(target) else "")
            raise TargetError(
                f"target spec {spec!r}: the factory returned a {type(target).__name__}, not "
                f"an AbstractTarget{hint}; return sdekit.target_from_log_prob(fn, dim=...)"
            )
        return target
    signature = _log_density_signature(obj)
    _check_options(spec, signature, options)
    options = dict(options)
    if "dim" not in options:
        raise CompositionError(
            f"target {spec!r} is a log-density of one point x; give its dimension as the "
            f"option dim (sdekit sample ... --set target.dim=D, or dim=D in Python)"
        )
    dim, log_Z = options.pop("dim"), options.pop("log_Z", None)
    fn = functools.wraps(obj)(functools.partial(obj, **options)) if options else obj
    return target_from_log_prob(fn, dim=dim, log_Z=log_Z)


def _check_options(spec: str, signature: inspect.Signature, options: dict[str, Any]) -> None:
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        raise CompositionError(
            f"target {spec!r} has no option {', '.join(map(repr, unknown))}; its options "
            f"are: {', '.join(params) or 'none'}"
        )


def _numpyro_entry(spec: str) -> Entry:
    try:
        return registry().get("target", NUMPYRO)
    except UnknownNameError:
        raise UnknownNameError(
            f"target spec {spec!r} needs the target 'numpyro', which no loaded plugin "
            f"registers (it comes with the sdekit_numpyro plugin; see 'sdekit plugins')"
        ) from None


def resolve_target(spec: str | AbstractTarget, **options: Any) -> AbstractTarget:
    """The target `spec` names, built with `options`.

    `spec` is a registered name (`"funnel"`), `"path/to/file.py:name"`,
    `"package.module:name"`, `"numpyro:path/to/file.py:model"` (a NumPyro model; options
    of the `numpyro` target such as `data`), or an `AbstractTarget` (returned as is). See
    the module docstring (and `docs/numpyro.md`) for what `name` may be.

    ```python
    target = sdekit.resolve_target("examples/banana.py:log_prob", dim=2)
    target = sdekit.resolve_target("numpyro:examples/eight_schools.py:noncentered")
    ```
    """
    if isinstance(spec, AbstractTarget):
        if options:
            raise CompositionError("an AbstractTarget object takes no options")
        return spec
    if not isinstance(spec, str):
        raise TargetError(f"a target spec is a string, got {type(spec).__name__} {spec!r}")
    if not is_spec(spec):
        return create("target", target_entry(spec).name, **options)
    if spec.startswith(f"{NUMPYRO}:"):
        _numpyro_entry(spec)
        return create("target", NUMPYRO, model=spec[len(NUMPYRO) + 1:], **options)
    obj = load_object(spec)
    return _from_object(obj, _kind_of(obj, spec), spec, options)


def target_entry(name: str) -> Entry:
    """The registry entry of target `name`, or for a spec an `Entry` whose factory builds it
    (`resolve_target`) and whose signature lists its options, so that configurations
    (`sdekit sample`, `config.toml`) treat both alike."""
    if not is_spec(name):
        try:
            return registry().get("target", name)
        except UnknownNameError as e:
            raise UnknownNameError(
                f"{e} A target is a registered name ('sdekit list targets') or a spec: "
                f"path/to/file.py:NAME, package.module:NAME or numpyro:path/to/file.py:MODEL"
            ) from None
    if name.startswith(f"{NUMPYRO}:"):
        entry = _numpyro_entry(name)
        signature = inspect.signature(entry.factory)
        signature = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "model"]
        )
        doc = f"The NumPyro model {name[len(NUMPYRO) + 1:]}. {inspect.getdoc(entry.factory) or ''}"
        plugin = entry.plugin
    else:
        obj = load_object(name)
        kind = _kind_of(obj, name)
        if kind == "target":
            signature = inspect.Signature([])
        elif kind == "factory":
            signature = inspect.signature(obj)
        else:
            signature = _log_density_signature(obj)
        doc = inspect.getdoc(obj) or f"The {kind} {name}."
        plugin = USER_CODE

    def factory(**options: Any) -> AbstractTarget:
        return resolve_target(name, **options)

    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__doc__ = doc
    return Entry("target", name, factory, plugin)


def build_target(section: dict[str, Any]) -> dict[str, Any] | AbstractTarget:
    """A `[target]` configuration section as `sdekit.compose` takes it: the section itself
    for a registered name, the built target for a spec."""
    name = section.get("name")
    if not is_spec(name):
        return dict(section)
    return resolve_target(name, **{k: v for k, v in section.items() if k != "name"})


def short_name(name: str) -> str:
    """A file-name-safe short form of a target name: `numpyro:ex/eight_schools.py:model`
    -> `eight_schools-model`."""
    if not is_spec(name):
        return name
    location, attribute = split_spec(name.removeprefix(f"{NUMPYRO}:"))
    stem = Path(location).stem if _is_file(location) else location.rsplit(".", 1)[-1]
    return re.sub(r"[^\w.-]", "_", f"{stem}-{attribute}")
