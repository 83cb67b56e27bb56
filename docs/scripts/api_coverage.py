"""What the site must document, and what it leaves out: every public name of `sdekit` and
`sdekit.testing` (their `__all__`), with a docstring, rendered by a `::: name` directive
of a reference page; every hook of `sdekit.hookspecs` on the hook reference and the plugin
guide. Used by the build hook (`hooks.py`) and by `tests/test_docs.py`."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
#: Modules whose `__all__` is the public API.
MODULES = ("sdekit", "sdekit.testing")
_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def public_names() -> list[str]:
    """Every public name, fully qualified (`sdekit.simulate`, `sdekit.testing.K_SE`)."""
    import importlib

    return [f"{m}.{n}" for m in MODULES for n in importlib.import_module(m).__all__]


def hooks() -> list[str]:
    """The hook names declared in `sdekit.hookspecs`."""
    import inspect

    from sdekit import hookspecs

    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
            if n.startswith("register_")]


def directives(docs: Path = DOCS) -> set[str]:
    """The objects rendered by `::: name` directives anywhere on the site."""
    return {m for p in docs.rglob("*.md") for m in _DIRECTIVE.findall(p.read_text())}


def undocumented(docs: Path = DOCS) -> list[str]:
    """Public names that no directive renders, by itself or as a member of a rendered module."""
    shown = directives(docs)
    return [n for n in public_names()
            if n not in shown and n.rsplit(".", 1)[0] not in shown - set(MODULES)]


def missing_docstrings(members: bool = True) -> list[str]:
    """Public names (and, with `members`, the public methods and properties of public
    classes) without a docstring; fields are described in their class's docstring."""
    import griffe

    package = griffe.load("sdekit", search_paths=[str(ROOT)])
    missing = []
    for name in public_names():
        obj = package[name.removeprefix("sdekit.")]
        obj = obj.final_target if obj.is_alias else obj
        if not obj.docstring:
            missing.append(name)
        if members and obj.is_class:
            missing += [f"{name}.{m}" for m, member in obj.members.items()
                        if (not m.startswith("_") or m == "__call__") and not member.is_alias
                        and _is_method(member) and not member.docstring]
    return missing


def _is_method(member) -> bool:
    return member.is_function or "property" in member.labels


def interface_members() -> list[tuple[str, str]]:
    """`(interface, member)` for every public member of the `Abstract*` classes of `sdekit`."""
    import griffe

    import sdekit

    package = griffe.load("sdekit", search_paths=[str(ROOT)])
    return [(name, member) for name in sdekit.__all__ if name.startswith("Abstract")
            for member in package[name].final_target.members
            if not member.startswith("_") or member == "__call__"]


def hooks_missing_from(page: Path) -> list[str]:
    """Hooks whose name does not appear on `page`."""
    text = page.read_text()
    return [h for h in hooks() if h not in text]
