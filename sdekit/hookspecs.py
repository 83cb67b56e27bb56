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
    """Register unnormalised target densities: `register(name, factory)` for each, where
    `factory(**options)` returns an `AbstractTarget`.

    ```python
    @sdekit.hookimpl
    def register_targets(register):
        register("banana", Banana)
    ```
    """


@hookspec
def register_processes(register):
    """Register forward SDEs: `register(name, factory)`, where `factory(**options)`
    returns an `AbstractProcess`."""


@hookspec
def register_scores(register):
    """Register scores and drifts: `register(name, factory)`, where `factory(**options)`
    returns an `AbstractScore` and may take the parts `target` and `process`."""


@hookspec
def register_controllers(register):
    """Register learnable drifts: `register(name, factory)`, where
    `factory(target=..., seed=..., **options)` returns an `AbstractController` (it may
    take `process` too)."""


@hookspec
def register_samplers(register):
    """Register samplers: `register(name, factory)`, where `factory(**options)` returns an
    `AbstractSampler` and may take the parts `target`, `process`, `score`, `controller`."""


@hookspec
def register_diagnostics(register):
    """Register diagnostics: `register(name, factory)`, where `factory(**options)` returns
    an `AbstractDiagnostic`."""


@hookspec
def register_commands(cli):
    """Add click commands to `cli`, the `sdekit` click group: `cli.add_command(command)`.
    A plugin may not replace or remove another's command."""
