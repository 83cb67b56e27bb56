"""XLA settings every sdekit process needs, applied when `sdekit` is imported.

XLA's concurrency-optimised CPU scheduler (jaxlib 0.10.2) can deadlock a compiled program:
the process waits at 0% CPU forever (see `docs/performance.md`, "A run that hangs").
Importing sdekit turns it off by adding `CPU_FLAGS` to `XLA_FLAGS`, which XLA reads once,
when JAX starts its backend (at the first computation, not at `import jax`). A flag the
user already set in `XLA_FLAGS` is left as it is, so
`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true` restores XLA's default.
"""

import os
import warnings
from collections.abc import MutableMapping

__all__ = ["CPU_FLAGS", "configure_xla"]

#: Flags added to `XLA_FLAGS` unless the user set them.
CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def _missing(flags: str) -> list[str]:
    return [f for f in CPU_FLAGS if f.split("=", 1)[0] not in flags]


def _cpu_backend_started() -> bool:
    try:  # a private name (there is no public query): without it, no warning
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:
        return False
    if not backends_are_initialized():
        return False
    import jax

    return jax.default_backend() == "cpu"


def configure_xla(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Append the `CPU_FLAGS` the user has not set to `environ["XLA_FLAGS"]`; return them.

    Warns (`RuntimeWarning`) when JAX's CPU backend has already started, since the flags
    then come too late for this process.
    """
    flags = environ.get("XLA_FLAGS", "")
    missing = _missing(flags)
    if not missing:
        return []
    environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
    if _cpu_backend_started():
        warnings.warn(
            f"JAX ran a computation before sdekit was imported, so XLA started without "
            f"{' '.join(missing)}; without it some sdekit programs deadlock on CPU. Import "
            f"sdekit first, or set XLA_FLAGS={' '.join(missing)} before Python starts",
            RuntimeWarning, stacklevel=3)
    return missing


configure_xla()
