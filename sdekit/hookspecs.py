"""The hooks a plugin implements. Each receives a `register(name, factory)` callback.

A *factory* is a callable (usually the class itself) that builds the part from keyword
options. Its signature is its documentation: `sdekit show` prints the options and defaults.
Factories of scores and samplers may take the composed parts they need as keyword
arguments named `target`, `process`, `score`, `controller`.

A plugin is checked when it is loaded: a function decorated with `@sdekit.hookimpl`
whose name is not one of these hooks (`register_target` for `register_targets`), or a
hook-named function without the decorator, is an error naming the plugin, never a
silent no-op.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sdekit")
hookimpl = pluggy.HookimplMarker("sdekit")
"""The decorator of a plugin's hook implementations: `@sdekit.hookimpl`."""


@hookspec
def register_targets(register):
    """Register unnormalised target densities (`AbstractTarget` factories)."""


@hookspec
def register_processes(register):
    """Register forward SDEs (`AbstractProcess` factories)."""


@hookspec
def register_scores(register):
    """Register scores and drifts (`AbstractScore` factories)."""


@hookspec
def register_controllers(register):
    """Register learnable drift parameterisations (`AbstractController` factories)."""


@hookspec
def register_samplers(register):
    """Register samplers (`AbstractSampler` factories)."""


@hookspec
def register_diagnostics(register):
    """Register diagnostics and metrics (`AbstractDiagnostic` factories)."""


@hookspec
def register_commands(cli):
    """Add click commands to the `sdekit` command group `cli`."""
