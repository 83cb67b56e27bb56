"""Hypothesis-generated `--set` values of every TOML type, for options of every section,
through the command line on the real plugins: a run either succeeds or ends in one
`Error: ...` line, never a traceback nor an "unexpected" error (the CLI's word for a bug).

Generated: integers (zero, negative, beyond 32 and 64 bits), floats (nan, +-inf, -0.0, the
extremes), booleans, strings (quoted, bare, unicode, names of real options), arrays (empty,
nested, mixed), inline tables, malformed text; keys of every section (real options of every
registered part, unknown ones, `name`, sections that do not exist) and `-n`, `--seed`,
`--steps`."""

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import _run as run_module
from sdekit.cli import cli

_REG = sdekit.registry()
#: Every option of every registered part, by section; and some that no part has.
OPTIONS = {kind: sorted({o for n in _REG.names(kind) for o in _REG.get(kind, n).options()})
           for kind in ("target", "sampler", "process", "score", "controller")}
SECTIONS = [*OPTIONS, "weird", ""]
#: Names a string option may take, so that some generated strings are valid.
WORDS = ["euler", "heun", "tsit5", "autodiff", "stein", "linear", "cosine", "uniform", "auto",
         "kl", "log-variance", "exact", "prior", "laplace", "underdamped", "nope", ""]


def _mostly(usual: st.SearchStrategy, rare: st.SearchStrategy, odds: int) -> st.SearchStrategy:
    """`usual` `odds` times as often as `rare` (`st.one_of` would weigh them equally)."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else usual)


def _ints(small: bool) -> st.SearchStrategy[int]:
    # Huge values only where no allocation can start: a dimension of 2**31 would try to.
    edge = [0, -1, 1] if small else [0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]
    return st.one_of(st.integers(-3, 8), st.sampled_from(edge))


FLOATS = st.one_of(
    st.sampled_from(["nan", "+nan", "inf", "-inf", "-0.0", "0.0", "1e308", "-1e308", "5e-324",
                     "1e-300", "2.5", "0.5"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
STRINGS = st.one_of(st.sampled_from(WORDS).map(json.dumps), st.sampled_from(WORDS),
                    st.text(max_size=8).map(json.dumps), st.text(max_size=8))
MALFORMED = st.sampled_from(["[1,", "{", "1..2", "'", '"', "[[]", "0x", "1_", "tru", "=",
                             "a=b", "[1, 2", "{a = }", "nan nan", "1e", "--", "[1,,2]"])


def _values(small: bool) -> st.SearchStrategy[str]:
    """TOML text of a value of any type (or text that is not TOML)."""
    scalars = st.one_of(_ints(small).map(str), FLOATS, st.sampled_from(["true", "false"]),
                        STRINGS)
    arrays = st.recursive(st.lists(scalars, max_size=4).map(lambda v: f"[{', '.join(v)}]"),
                          lambda inner: st.lists(inner, max_size=3).map(
                              lambda v: f"[{', '.join(v)}]"), max_leaves=6)
    tables = st.dictionaries(st.sampled_from(["a", "b", "dim"]), scalars, max_size=2).map(
        lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}")
    return _mostly(scalars, st.one_of(arrays, tables, MALFORMED), 2)


@functools.cache
def _options_of(target: str, sampler: str) -> dict[str, Any]:
    """`"section.option" -> default` for each part of the run `target` x `sampler`."""
    cfg = sdekit.resolve_config(target=target, sampler=sampler)
    return {f"{kind}.{o}": d for kind in OPTIONS if kind in cfg
            for o, d in _REG.get(kind, cfg[kind]["name"]).options().items()}


def _typed(default: Any, small: bool) -> st.SearchStrategy[str]:
    """Values of the type of `default` (edge values included), so that the run goes on."""
    if isinstance(default, bool):
        return st.sampled_from(["true", "false"])
    if isinstance(default, int):
        return _ints(small).map(str)
    if isinstance(default, float):
        return FLOATS
    if isinstance(default, str):
        return st.sampled_from(WORDS).map(json.dumps)
    return _values(small)


def _option(target: str, sampler: str, small: bool) -> st.SearchStrategy[str]:
    """`KEY=VALUE`: mostly one of the run's own options with a value of its type, else
    anything (any key of any section, any value)."""
    own = _options_of(target, sampler)
    typed = st.sampled_from(sorted(own)).flatmap(
        lambda k: _typed(own[k], small).map(lambda v: f"{k}={v}"))
    other_key = st.one_of(
        st.sampled_from(sorted(own)),
        st.sampled_from(list(OPTIONS)).flatmap(
            lambda s: st.sampled_from([*OPTIONS[s], "bogus", "name"]).map(lambda o: f"{s}.{o}")),
        st.tuples(st.sampled_from(SECTIONS), st.sampled_from(["dim", "steps", "x", ""])).map(
            ".".join),
        st.sampled_from(["n", "seed", "steps", "sampler", ""]))
    anything = st.tuples(other_key, _values(small)).map("=".join)
    return _mostly(typed, anything, 3)


def _args(target: str, sampler: str, small: bool) -> st.SearchStrategy[list[str]]:
    """One to three `--set KEY=VALUE`, or `-n`/`--seed`/`--steps` with a value."""
    flag = st.tuples(st.sampled_from(["-n", "--seed", "--steps"]), _mostly(
        st.integers(1, 8).map(str), st.one_of(_ints(small).map(str), _values(small)), 4))
    option = st.tuples(st.just("--set"), _option(target, sampler, small))
    pair = _mostly(option, flag, 5)
    return st.lists(pair, min_size=1, max_size=3).map(lambda ps: [a for p in ps for a in p])


def _cases(targets: list[str], samplers: list[str], small: bool):
    """`(target, sampler, args)` with args generated for that run's options."""
    return st.tuples(st.sampled_from(targets), st.sampled_from(samplers)).flatmap(
        lambda ts: st.tuples(st.just(ts[0]), st.just(ts[1]), _args(*ts, small)))


#: Python's own words for a value of the wrong type reaching code that never checked it.
LEAKED = re.compile(r"not supported between instances|unsupported operand|object is not "
                    r"(callable|subscriptable|iterable)|has no attribute|incompatible function "
                    r"arguments|positional argument")

FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _clean(result, out: Path) -> None:
    """Success, or exactly one `Error:` line that is not a bug report, and no partial output."""
    assert "Traceback" not in result.output, result.output
    event("success" if result.exit_code == 0 else "usage error" if result.exit_code == 2
          else "error")
    if result.exit_code != 0:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.stderr
        assert "Error: unexpected " not in errors[0], errors[0]
        assert not LEAKED.search(errors[0]), errors[0]
    if out.exists():
        names = {p.name for p in out.iterdir()}
        assert not any(n.endswith(".tmp") for n in names), names
        assert "samples.npz" not in names or "metrics.json" in names, names


@settings(max_examples=100, **FUZZ)
@given(_cases(["gaussian", "funnel", "gmm", "many-well-54"], _REG.names("sampler"), small=False))
def test_fuzzed_sets_compose_or_say_why(tmp_path, case):
    """Any value, huge ones included, as far as composing the run (`--dry-run`)."""
    target, sampler, args = case
    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["sample", target, "--sampler", sampler, *args,
                                      "--out", str(out), "--dry-run"])
    _clean(result, out)
    assert not out.exists()


@settings(max_examples=20, **FUZZ)
@given(_cases(["gaussian", "funnel"], ["reverse-sde", "follmer", "smc"], small=True))
def test_fuzzed_sets_run_or_say_why(tmp_path, monkeypatch, case):
    """Whole runs (integers small, so that each takes a moment), written to disk."""
    target, sampler, args = case
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights",))
    out = tmp_path / f"run-{abs(hash((target, sampler, *args)))}"
    result = CliRunner().invoke(cli, ["sample", target, "--sampler", sampler, "-n", "16",
                                      "--steps", "2", *args, "--out", str(out)])
    _clean(result, out)


@pytest.mark.parametrize("key, value", [
    ("target.dim", 2**63 - 1),        # reached XLA as a shape and aborted the process
    ("target.dim", 2**63),            # beyond what TOML itself allows
    ("sampler.steps", -(2**31) - 1),
    ("sampler.draws", 10**30),
    ("target.mean", [1, 2**40]),      # inside an array too
])
def test_integers_beyond_32_bits_are_refused_before_any_work(key, value):
    bad = value if isinstance(value, int) else value[1]
    with pytest.raises(sdekit.ConfigError, match=rf"{key} = {bad} is out of range: integers "
                       r"must lie in \[-2147483648, 2147483647\]"):
        sdekit.resolve_config(target="gaussian", sampler="follmer", sets=[f"{key}={value}"])


def test_seeds_may_use_all_32_bits_and_n_is_bounded():
    cfg = sdekit.resolve_config(target="gaussian", sampler="pis",
                                sets=["controller.seed=4294967295"])
    assert cfg["controller"]["seed"] == 2**32 - 1
    with pytest.raises(sdekit.ConfigError, match=r"controller.seed = 4294967296 is out of range"):
        sdekit.resolve_config(target="gaussian", sampler="pis", sets=["controller.seed=4294967296"])
    with pytest.raises(sdekit.ConfigError, match=r"n = 2147483648 is out of range"):
        sdekit.resolve_config(target="gaussian", n=2**31)


def test_an_option_annotated_float_or_none_takes_a_number_only():
    """`t_max: float | None = None` once passed `[]` on to a comparison in the factory."""
    with pytest.raises(sdekit.ConfigError, match=r"process.t_max must be a number, got \[\]"):
        sdekit.resolve_config(target="gaussian", sampler="follmer", sets=["process.t_max=[]"])
    cfg = sdekit.resolve_config(target="gaussian", sampler="follmer", sets=["process.t_max=0"])
    assert cfg["process"]["t_max"] == 0.0 and isinstance(cfg["process"]["t_max"], float)
