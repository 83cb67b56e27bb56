"""MkDocs build hooks: the CLI reference includes the commands plugins add, the benchmark
figures are drawn from the stored results, and an undocumented public name, a public name
without a docstring or a hook missing from the reference is a warning (an error under
`--strict`)."""

import importlib.util
import logging
import sys
from pathlib import Path

from mkdocs.structure.files import File

_HERE = Path(__file__).resolve().parent
log = logging.getLogger("mkdocs.plugins.sdekit")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def on_config(config):
    from sdekit.cli import cli

    cli.load_plugin_commands()  # as `sdekit` does at start-up, so mkdocs-click sees them
    return config


def on_files(files, config):
    coverage = _load("api_coverage")
    docs = Path(config["docs_dir"])
    for name in coverage.undocumented(docs):
        log.warning(f"{name} is public but no '::: {name}' directive documents it")
    for name in coverage.missing_docstrings(members=True):
        log.warning(f"{name} has no docstring")
    for page in ("reference/hooks.md", "plugin-guide.md"):
        for hook in coverage.hooks_missing_from(docs / page):
            log.warning(f"hook {hook} is not documented in {page}")
    figures = _load("benchmark_figures")
    for path, content in figures.figures().items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace `<!-- diffusion_samplers table -->` by the table of the stored runs."""
    marker = "<!-- diffusion_samplers table -->"
    if marker in markdown:
        markdown = markdown.replace(marker, sys.modules["benchmark_figures"].summary_table())
    return markdown
