"""Meta-tests of the documentation: every public name and hook is on the site, every
interface member is in the plugin guide, every hook is implemented by some test's plugin,
every page is in the navigation, and CI runs the README's commands."""

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

import sdekit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_spec = importlib.util.spec_from_file_location("api_coverage", DOCS / "scripts" / "api_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

#: Where a hook counts as exercised: test files that register plugins, and the example
#: plugin, whose own tests (run by .ci/run) check every part it registers.
HOOK_TEST_SOURCES = (*sorted((ROOT / "tests").glob("*.py")),
                     *sorted((ROOT / "plugins" / "sdekit-example").rglob("*.py")))


def _docs_extra(module: str):
    """A module of the docs extra (`pip install -e ".[test,docs]"`, as .ci/run installs)."""
    return pytest.importorskip(module, reason="needs the docs extra: pip install -e '.[docs]'")


def test_every_public_name_is_rendered_on_the_site():
    missing = coverage.undocumented()
    assert missing == [], f"add '::: NAME' lines for {missing} to docs/reference/api.md"


def test_every_public_name_method_and_property_has_a_docstring():
    _docs_extra("griffe")
    assert coverage.missing_docstrings(members=True) == []


@pytest.mark.parametrize("page", ["reference/hooks.md", "plugin-guide.md"])
def test_every_hook_is_documented(page):
    assert coverage.hooks(), "no hooks found in sdekit.hookspecs"
    assert coverage.hooks_missing_from(DOCS / page) == []


def test_plugin_guide_names_every_interface_member():
    _docs_extra("griffe")
    guide = (DOCS / "plugin-guide.md").read_text()
    members = coverage.interface_members()
    assert len(members) > 30
    assert [f"{i}.{m}" for i, m in members if f"`{m}" not in guide] == []


@pytest.mark.parametrize("hook", coverage.hooks())
def test_every_hook_is_implemented_by_a_tested_plugin(hook):
    pattern = re.compile(rf"@(sdekit\.)?hookimpl\s*\n\s*def {hook}\(")
    users = [p.relative_to(ROOT) for p in HOOK_TEST_SOURCES if pattern.search(p.read_text())]
    assert users, f"no test implements the hook {hook}"


def _nav_pages(nav) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    items = nav.values() if isinstance(nav, dict) else nav
    return set().union(*(_nav_pages(item) for item in items))


def test_every_page_is_in_the_navigation():
    yaml = _docs_extra("yaml")
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")
             if not p.relative_to(DOCS).parts[0] == "scripts"}
    nav = _nav_pages(config["nav"])
    assert pages - nav == set(), "pages missing from the nav of mkdocs.yml"
    assert nav - pages == set(), "nav entries without a page"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block with the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_and_builds_the_site():
    install, test = _readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci, f"the README's test command {test!r} is not in .ci/run"
    assert 'pip install -e ".[test' in install and "sdekit sample" in install
    assert re.search(r"pip install -q -e \"\.\[test,docs\]\"", ci)
    assert "mkdocs build --strict" in ci
    assert shlex.split(install)[:4] == ["python3", "-m", "venv", ".venv"]


def _guide_block(start: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "plugin-guide.md").read_text(), re.S)
    found = [b for b in blocks if b.startswith(start)]
    assert len(found) == 1, f"expected one python block of the plugin guide starting {start!r}"
    return found[0]


def test_the_plugin_guides_complete_plugin_passes_the_guides_tests(tmp_path, monkeypatch, capsys):
    """The guide's plugin (a process and a target), used and tested exactly as the guide's
    own blocks do: written to my_plugin.py, sampled from, then its test functions run."""
    (tmp_path / "my_plugin.py").write_text(_guide_block("# my_plugin.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_plugin  # noqa: F401  (imported to register its parts; the guide does the same)

    try:
        exec(_guide_block("import jax, sdekit\nimport my_plugin"), {})
        assert np.isfinite(float(capsys.readouterr().out))
        sdekit.unregister_plugin("my_plugin")
        tests: dict = {}
        exec(_guide_block("# tests/test_my_plugin.py"), tests)
        names = [n for n in tests if n.startswith("test_")]
        assert len(names) == 5
        for name in names:
            tests[name]()
    finally:
        sdekit.unregister_plugin("my_plugin")
        sys.modules.pop("my_plugin", None)
