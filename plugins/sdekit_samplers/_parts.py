from typing import Any

import sdekit
from sdekit import AbstractTarget

Spec = str | dict[str, Any] | Any
"""A part: a registered name, a `{"name": ..., **options}` dict, or an object."""


def resolve_target(spec: Spec) -> AbstractTarget:
    """The target `spec` describes (`sdekit.resolve_part`). A target object is taken as
    given: it may hold traced arrays (a sampler built inside `jax.jit`), where the value
    checks of `sdekit.check_target` cannot run; `sdekit.compose` checks it."""
    return spec if isinstance(spec, AbstractTarget) else sdekit.resolve_part("target", spec)
