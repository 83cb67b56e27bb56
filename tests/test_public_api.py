"""Plugins, benchmarks and examples use only sdekit's public API, and plugins are independent.

Every Python file under `plugins/`, `benchmarks/` and `examples/` is parsed (`ast`, nothing is
imported) and each import is checked:

- no private module of the core: `sdekit._x` (`import sdekit._x`, `from sdekit._x import …`,
  `from sdekit import _x`); the core's public API is `sdekit` and its public submodules
  (`sdekit.metrics`, `sdekit.fokker_planck`, …);
- no private module of a first-party plugin (`sdekit_foo._bar`) from outside that plugin;
- a plugin imports no other first-party plugin at all: plugins reach each other's parts
  through the registry (`sdekit.create`, `sdekit.resolve_part`), by name. A plugin that
  truly needs another one's public API must be listed in `DECLARED_DEPENDENCIES`, with why.

`importlib.import_module("…")` with a literal name counts as an import.

In `tests/` the rules are those of white-box tests: a test may import private modules of
the core (to test them), and private modules of **one** first-party plugin, the one it
tests; importing private modules of two plugins means a test leans on one plugin's
internals to test another, and fails here.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
SCANNED = ("plugins", "benchmarks", "examples")

#: First-party plugins: the packages under `plugins/`.
FIRST_PARTY = frozenset(p.name for p in PLUGINS.iterdir() if (p / "__init__.py").is_file())

#: `{plugin: {other plugin: why}}`: the public dependencies a plugin declares on another.
#: Empty: every first-party plugin works with only the core installed.
DECLARED_DEPENDENCIES: dict[str, dict[str, str]] = {}


def _python_files(*folders: str) -> list[Path]:
    return sorted(f for d in folders for f in (ROOT / d).rglob("*.py"))


def _imported(node: ast.AST, package: str | None) -> Iterator[str]:
    """The dotted names one node imports: modules, and `module.name` for `from module import
    name` (a name may be a submodule). Relative imports resolve against `package`."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            if package is None:
                return
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value


def _package_of(path: Path) -> str | None:
    """The dotted package a file under `plugins/` belongs to (`sdekit_foo` or deeper)."""
    try:
        rel = path.relative_to(PLUGINS)
    except ValueError:
        return None
    return ".".join(rel.parent.parts) or None


def imports(path: Path) -> Iterator[tuple[int, list[str]]]:
    """`(line, dotted names)` for every import statement (or `import_module` call) in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    for node in ast.walk(tree):
        names = list(_imported(node, package))
        if names:
            yield node.lineno, names


def _private_part(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])


def _problem(name: str, own: str | None) -> str | None:
    top = name.split(".")[0]
    if top == "sdekit" and _private_part(name):
        return f"imports {name}, a private module of the core"
    if top in FIRST_PARTY and top != own and _private_part(name):
        return f"imports {name}, a private module of plugin {top}"
    if own is not None and top in FIRST_PARTY and top != own and top not in DECLARED_DEPENDENCIES.get(own, {}):
        return (
            f"plugin {own} imports plugin {top}; reach its parts through the registry "
            "(sdekit.create / sdekit.resolve_part), or declare the dependency"
        )
    return None


def violations(path: Path) -> list[str]:
    """`file:line: what` for each bad import of one file under `plugins/`, `benchmarks/` or
    `examples/` (one per statement), in line order."""
    own = _package_of(path)
    own = None if own is None else own.split(".")[0]
    found = []
    for line, names in imports(path):
        problems = [p for p in (_problem(name, own) for name in names) if p is not None]
        if problems:
            found.append((line, f"{path.relative_to(ROOT)}:{line}: {problems[0]}"))
    return [message for _, message in sorted(found)]


def test_the_scan_finds_every_kind_of_bad_import(tmp_path, monkeypatch):
    """The checker itself, on files written for it."""
    plugins = tmp_path / "plugins"
    (plugins / "sdekit_a").mkdir(parents=True)
    (plugins / "sdekit_a" / "__init__.py").write_text("")
    (plugins / "sdekit_b").mkdir()
    (plugins / "sdekit_b" / "__init__.py").write_text("")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PLUGINS", plugins)
    monkeypatch.setitem(globals(), "FIRST_PARTY", frozenset({"sdekit_a", "sdekit_b"}))
    bad = plugins / "sdekit_a" / "_mod.py"
    bad.write_text(
        "import sdekit\n"                          # fine
        "from sdekit.metrics import mmd\n"         # fine: a public submodule
        "from . import _other\n"                   # fine: its own private module
        "from ._other import x\n"                  # fine
        "import sdekit._path\n"                    # 5: private core
        "from sdekit import _io\n"                 # 6: private core
        "def f():\n"
        "    from sdekit_b._c import y\n"          # 8: private module of another plugin
        "import sdekit_b\n"                        # 9: another plugin
        "import importlib\n"
        "importlib.import_module('sdekit._x')\n"   # 11: private core
    )
    lines = [int(v.split(":")[1]) for v in violations(bad)]
    assert lines == [5, 6, 8, 9, 11], violations(bad)
    script = tmp_path / "benchmarks" / "s.py"
    script.parent.mkdir()
    script.write_text("from sdekit_a import thing\nfrom sdekit_a import _secret\n")
    (message,) = violations(script)
    assert message == "benchmarks/s.py:2: imports sdekit_a._secret, a private module of plugin sdekit_a"
    white_box = tmp_path / "test_x.py"
    white_box.write_text("from sdekit import _train\nfrom sdekit_a._m import f\nimport sdekit_b\n")
    assert private_plugins(white_box) == {"sdekit_a"}
    white_box.write_text("from sdekit_a._m import f\nfrom sdekit_b import _n\n")
    assert private_plugins(white_box) == {"sdekit_a", "sdekit_b"}


def test_plugins_benchmarks_and_examples_use_only_the_public_api():
    found = [v for f in _python_files(*SCANNED) for v in violations(f)]
    assert not found, "imports outside the public API:\n" + "\n".join(found)


def test_declared_dependencies_are_first_party_plugins():
    for plugin, deps in DECLARED_DEPENDENCIES.items():
        assert plugin in FIRST_PARTY and set(deps) <= FIRST_PARTY, (plugin, deps)


def private_plugins(path: Path) -> set[str]:
    """The first-party plugins whose private modules the file imports."""
    return {
        name.split(".")[0]
        for _, names in imports(path)
        for name in names
        if name.split(".")[0] in FIRST_PARTY and _private_part(name)
    }


def test_a_test_uses_the_internals_of_one_plugin_at_most():
    """White-box tests: a test file may import private modules of the core and of the one
    plugin it tests, not of two plugins."""
    found = [
        f"{path.relative_to(ROOT)}: private modules of {', '.join(sorted(plugins))}"
        for path in _python_files("tests")
        if len(plugins := private_plugins(path)) > 1
    ]
    assert not found, "\n".join(found)
