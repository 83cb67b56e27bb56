"""sdekit-example: a third-party sdekit plugin, registered through the `sdekit` entry-point
group of its own `pyproject.toml`. It uses only sdekit's public API."""

import sdekit

from ._cli import ou_table
from ._parts import LinearControl, ModeBalance, OrnsteinUhlenbeck, Ring

__all__ = ["LinearControl", "ModeBalance", "OrnsteinUhlenbeck", "Ring", "ou_table"]


@sdekit.hookimpl
def register_processes(register):
    register("ou", OrnsteinUhlenbeck)


@sdekit.hookimpl
def register_targets(register):
    register("ring", Ring)


@sdekit.hookimpl
def register_controllers(register):
    register("linear", LinearControl)


@sdekit.hookimpl
def register_diagnostics(register):
    register("mode-balance", ModeBalance)


@sdekit.hookimpl
def register_commands(cli):
    cli.add_command(ou_table)
