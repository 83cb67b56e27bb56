"""Option checks: a `ValueError` naming the option and the bad value (a `CompositionError` via `sdekit.create`)."""

import math


GRADIENTS = ("autodiff", "stein")


def check_int(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(**values: float) -> None:
    for name, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and value > 0):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def check_draws(draws: int, chunk: int | None) -> tuple[int, int]:
    """`(draws, chunk)` validated; `chunk=None` means all draws at once."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    if chunk is None:
        return draws, draws
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1 (or None: all draws at once), got {chunk!r}")
    return draws, min(chunk, draws)


def check_gradient(gradient: str, extra: tuple[str, ...] = ()) -> str:
    allowed = (*GRADIENTS, *extra)
    if gradient not in allowed:
        raise ValueError(f"gradient must be one of {allowed}, got {gradient!r}")
    return gradient


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return seed
