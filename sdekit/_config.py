"""Configurations: defaults, TOML files, `--set`, validation with "did you mean", coercion.

A configuration is plain TOML-ready data. `resolve_config` turns a partial one (a loaded
`config.toml`, command-line names, `--set` strings) into the complete configuration of a
run: every option checked against the factory that takes it, every default filled in, and
a seed derived for every part that takes one. Writing the result to `config.toml` and
resolving it again gives the same configuration, so a run is reproduced from its file.
"""

import hashlib
import inspect
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import io
from ._compose import entry as registry_entry
from ._errors import SdekitError
from ._plugins import PARTS, Entry
from ._suggest import did_you_mean

__all__ = [
    "ConfigError", "check_section", "derive_seed", "load_config", "parse_set", "resolve_config",
]

#: Sections of a configuration, in the order they are written.
SECTIONS = ("target", "sampler", "process", "score", "controller")
#: Every top-level key of a configuration.
TOP_LEVEL = ("seed", "n", *SECTIONS)
#: What a run uses for what neither the configuration nor the command line gives.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "n": 10_000,
    "target": {"name": "gmm40"},
    "sampler": {"name": "reverse-sde"},
}
#: The run `sdekit sample` does with no configuration, target or sampler given: the
#: 40-mode mixture (log Z = 0 known, modes spread over [-40, 40]^2) sampled by tempered
#: SMC from N(0, 20^2 I), which covers the modes; no exact score is used. On 2 CPU
#: cores it takes well under a minute (docs/cli.md, "The default job").
DEFAULT_JOB: dict[str, Any] = {
    "n": 2000,
    "target": {"name": "gmm40"},
    "sampler": {"name": "smc", "sigma": 20.0, "steps": 50},
}
#: PRNG seeds are 32-bit: larger ones would alias smaller ones.
MAX_SEED = 2**32 - 1
#: Integer options (sizes, counts, steps) are 32-bit, as JAX's integers are without x64:
#: a larger one is no size any machine can allocate, and would overflow inside XLA.
MAX_INT = 2**31 - 1
#: Derived part seeds stay below 2**31, a valid seed under every integer convention.
_PART_SEED_BITS = 31

_EMPTY = inspect.Parameter.empty


class ConfigError(SdekitError):
    """A configuration (file, `--set` or arguments) that cannot describe a run."""


def load_config(path: str | Path) -> dict[str, Any]:
    """The TOML file `path` as data; `ConfigError` if it is missing or not valid TOML."""
    try:
        return io.load_toml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def parse_set(text: str, sections: Sequence[str] = SECTIONS) -> tuple[str, str, Any]:
    """`"section.option=value"` -> `(section, option, value)`.

    The value is read as TOML (`1`, `2.5`, `true`, `[1, 2]`, `"1"`), else taken as the
    string itself. `sections` are the valid section names; a misspelt one gets a "did you
    mean". Raises `ConfigError`.

    ```python
    sdekit.parse_set("process.beta_max=20")  # ("process", "beta_max", 20)
    ```
    """
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"--set expects SECTION.OPTION=VALUE, got {text!r}")
    section, dot, option = key.partition(".")
    if not dot or section not in sections or not option:
        raise ConfigError(
            f"--set key {key!r} must be SECTION.OPTION with SECTION one of "
            f"{', '.join(sections)} (e.g. --set {sections[-1]}.OPTION=VALUE)."
            + did_you_mean(section, sections)
        )
    if option == "name" and section in SECTIONS:
        raise ConfigError(f"--set {key}: choose the {section} with "
                          f"{'the TARGET argument' if section == 'target' else '--' + section}")
    if not raw.strip():
        raise ConfigError(f"--set {key}= needs a value")
    return section, option, io.parse_toml_value(raw.strip())


def coerce(where: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of its option's `default`: a number where the
    default is a number (ints become floats where it is a float), a bool where it is a
    bool, a string where it is a string; lists become tuples where it is a tuple."""
    if default is _EMPTY or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, float) and isinstance(value, int):
            return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    elif isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def check_section(
    section: str,
    given: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    owner: str = "",
    takes_any: bool = False,
) -> dict[str, Any]:
    """The options `given` for `[section]`, checked and completed against `options`.

    `options` maps each option to its default (`inspect.Parameter.empty` if required).
    An unknown option gets a "did you mean" (unless `takes_any`), a value of the wrong
    type or an integer beyond 32 bits (`MAX_INT`; `MAX_SEED` for a `seed`) a `ConfigError`
    naming it, and every default that is a TOML value is filled in
    (`None` and other defaults are left out: the factory's own default applies).
    `owner` names what takes the options (`"sampler 'pis'"`) in messages.
    """
    of = f" for {owner}" if owner else ""
    for key in given:
        if key not in options and not takes_any:
            raise ConfigError(
                f"unknown option {section}.{key}{of}.{did_you_mean(key, options, n=2)} Its options "
                f"are: {', '.join(options) or 'none'}"
            )
    out: dict[str, Any] = {}
    for key, value in given.items():
        _check_ints(f"{section}.{key}", value, MAX_SEED if key == "seed" else MAX_INT)
    for key, default in options.items():
        if key in given:
            out[key] = coerce(f"{section}.{key}", given[key], default)
        elif default is _EMPTY:
            raise ConfigError(f"{owner or section} needs option {key!r}: give it with --set "
                              f"{section}.{key}=VALUE or in the [{section}] section")
        elif default is not None and io.is_toml_value(default):
            out[key] = default
    return {**out, **{k: v for k, v in given.items() if k not in out}}


def _check_ints(where: str, value: Any, high: int) -> None:
    """Refuse an integer in `value` (a number, an array, a table) outside [-MAX_INT - 1, high]."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_ints(f"{where}.{k}", v, high)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_ints(where, v, high)
    elif isinstance(value, int) and not isinstance(value, bool) and not (
            -MAX_INT - 1 <= value <= high):
        raise ConfigError(f"{where} = {value} is out of range: integers must lie in "
                          f"[{-MAX_INT - 1}, {high}]")


def derive_seed(seed: int, kind: str) -> int:
    """The seed of part `kind` in a run with seed `seed`: the first 31 bits of
    `sha256("{seed}/{kind}")`. Deterministic, and different for every run seed and part,
    so that `--seed` decides every random choice of a run (network initialisations too)."""
    digest = hashlib.sha256(f"{seed}/{kind}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> (32 - _PART_SEED_BITS)


# --------------------------------------------------------------------------------------
# the configuration of a sampling run


def _as_section(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"{where} must be a name or a table, got {type(value).__name__} {value!r}")


def _check_int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be an integer {bounds}, got {value!r}")
    return value


def _from_file(config: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"{source}: unknown key {key!r}.{did_you_mean(key, TOP_LEVEL)} "
                              f"Valid keys: {', '.join(TOP_LEVEL)}")
        cfg[key] = _as_section(value, f"{source}: [{key}]") if key in SECTIONS else value
    return cfg


def _reseed(cfg: dict[str, Any], seed: int) -> None:
    """Drop the part seeds derived from the configuration's old seed, so that they are
    derived again from the new `seed`; seeds set by hand are kept."""
    old = cfg.get("seed", DEFAULTS["seed"])
    if old == seed:
        return
    for kind in (*PARTS, "sampler"):
        section = cfg.get(kind, {})
        if "seed" in section and isinstance(old, int) and section["seed"] == derive_seed(old, kind):
            del section["seed"]


def _apply(cfg: dict[str, Any], names: Mapping[str, str | None], n: int | None,
           seed: int | None) -> None:
    """Apply the command-line names, `n` and `seed` to `cfg`, then the defaults."""
    for kind, name in names.items():
        if name is not None and cfg.get(kind, {}).get("name") != name:
            cfg[kind] = {"name": name}
    if seed is not None:
        _reseed(cfg, seed)
        cfg["seed"] = seed
    if n is not None:
        cfg["n"] = n
    cfg.setdefault("seed", DEFAULTS["seed"])
    cfg.setdefault("n", DEFAULTS["n"])
    _check_int("seed", cfg["seed"], 0, MAX_SEED)
    _check_int("n", cfg["n"], 1)
    _check_ints("n", cfg["n"], MAX_INT)
    for kind in ("target", "sampler"):
        if "name" not in cfg.setdefault(kind, {}):
            cfg[kind] = {**DEFAULTS[kind], **cfg[kind]}
    for kind in SECTIONS:
        if kind in cfg and not isinstance(cfg[kind].get("name", ""), str):
            raise ConfigError(f"{kind}.name must be a string, got {cfg[kind]['name']!r}")


def _complete_part(entry: Entry, section: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """`section` checked against `entry`'s options, with a derived seed where it takes one."""
    given = {k: v for k, v in section.items() if k != "name"}
    for key in given:
        if key in PARTS:
            raise ConfigError(f"{entry.kind}.{key} is not an option: the {key} is its own part "
                              f"([{key}] section or --{key})")
    options = entry.options()
    if "seed" in options and "seed" not in given and entry.kind != "target":
        given["seed"] = derive_seed(seed, entry.kind)  # a target's seed defines the problem
    params = entry.parameters()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    owner = f"{entry.kind} {entry.name!r}"
    checked = check_section(entry.kind, given, options, owner=owner, takes_any=takes_any)
    for key, value in checked.items():  # `x: float | None = None`: a float, when given
        if key in params and params[key].default is None and value is not None:
            stand_in = _annotated_default(params[key])
            if stand_in is not None:
                checked[key] = coerce(f"{entry.kind}.{key}", value, stand_in)
    return {"name": entry.name, **checked}


def _annotated_default(param: inspect.Parameter) -> Any:
    """A stand-in default of the one scalar type `param` is annotated with besides `None`
    (`float | None` -> `0.0`), to check a value given for it; else `None`."""
    kinds = [a for a in typing.get_args(param.annotation) or (param.annotation,)
             if a is not type(None)]
    return kinds[0]() if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None


def _part_section(kind: str, section: dict[str, Any], param: inspect.Parameter,
                  sampler: str) -> dict[str, Any] | None:
    """The section of part `kind` with its name: given, or the sampler's default part."""
    if "name" in section:
        return section
    default = param.default
    if isinstance(default, Mapping) and isinstance(default.get("name"), str):
        return {**default, **section}
    if isinstance(default, str):
        return {**section, "name": default}
    if default is _EMPTY:
        raise ConfigError(f"sampler {sampler!r} needs a {kind}: give --{kind} NAME")
    if section:
        raise ConfigError(f"{kind} options given but no {kind} name: give --{kind} NAME")
    return None  # no default to write down: the factory's own default applies


def _resolve_parts(cfg: Mapping[str, Any], sampler: Entry) -> dict[str, Any]:
    params = sampler.parameters()
    takes = [p for p in PARTS if p in params]
    parts: dict[str, Any] = {}
    for kind in PARTS:
        if kind not in params:
            if cfg.get(kind) is not None:
                raise ConfigError(
                    f"sampler {sampler.name!r} does not take a {kind} (it takes: "
                    f"{', '.join(takes) or 'none'}); remove the {kind} setting")
            continue
        section = _part_section(kind, dict(cfg.get(kind) or {}), params[kind], sampler.name)
        if section is not None:
            parts[kind] = _complete_part(registry_entry(kind, section["name"]), section,
                                         cfg["seed"])
    return parts


def _set_steps(cfg: dict[str, Any], sampler: Entry, steps: int | None) -> None:
    if steps is None:
        return
    _check_int("--steps", steps, 1)
    _check_ints("--steps", steps, MAX_INT)
    if "steps" not in sampler.options():
        raise ConfigError(f"--steps: sampler {sampler.name!r} has no 'steps' option; its "
                          f"options are: {', '.join(sampler.options()) or 'none'}")
    cfg["sampler"]["steps"] = steps


def resolve_config(
    config: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
    sampler: str | None = None,
    process: str | None = None,
    score: str | None = None,
    controller: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    sets: Iterable[str] = (),
    source: str = "config",
) -> dict[str, Any]:
    """The complete configuration of a sampling run, as TOML-ready data.

    Starts from `config` (e.g. a loaded `config.toml`), then applies the part names,
    `steps`, `n`, `seed` and `sets` (`"section.option=value"` strings, as `--set` takes
    them); what none of them gives comes from `DEFAULTS`, and with no `config`, `target`
    or `sampler` at all the run is `DEFAULT_JOB`. A part renamed here drops the
    options `config` gave its old name. Every option is checked against the registry
    (with a "did you mean" for a misspelt one) and every default filled in; parts appear
    only where the sampler's factory takes them.

    **Seeds.** A part (other than the target) whose factory takes a `seed` option and
    that is not given one gets `derive_seed(seed, kind)`, recorded in the result. A new
    `seed` re-derives the part seeds `config` holds that were derived from its old seed;
    a part seed set by hand is kept.

    Returns `{"seed", "n", "target": {"name", ...}, "sampler": {...}, "process": {...},
    ...}`; raises `ConfigError` or `UnknownNameError` naming the bad key.
    """
    if config is None and target is None and sampler is None:
        config = DEFAULT_JOB
    cfg = _from_file(config, source)
    names = {"target": target, "sampler": sampler, "process": process, "score": score,
             "controller": controller}
    _apply(cfg, names, n, seed)
    sampler_entry = registry_entry("sampler", cfg["sampler"]["name"])
    _set_steps(cfg, sampler_entry, steps)
    for text in sets:
        section, option, value = parse_set(text)
        cfg.setdefault(section, {})[option] = value
    parts = _resolve_parts(cfg, sampler_entry)
    sampler_section = _complete_part(sampler_entry, cfg["sampler"], cfg["seed"])
    return {"seed": cfg["seed"], "n": cfg["n"], "target": parts.pop("target"),
            "sampler": sampler_section, **parts}
