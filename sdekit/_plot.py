"""Pictures of a run: samples against the target, as PNG bytes (matplotlib, no display)."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._target import AbstractTarget

__all__ = ["figure_png", "plot_png"]


def figure_png(fig) -> bytes:
    """The PNG bytes of a matplotlib `Figure` (drawn off-screen, 110 dpi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _finite_range(*arrays: np.ndarray | None, pad: float = 0.1) -> tuple[float, float]:
    """The 0.5–99.5 % range of the finite values of `arrays`, padded by `pad` of its span."""
    values = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None])
    if values.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return float(lo - pad * span), float(hi + pad * span)


def _column(a: np.ndarray | None, i: int) -> np.ndarray | None:
    return None if a is None else a[:, i]


def _plot_1d(ax, target: AbstractTarget, finite: np.ndarray, exact: np.ndarray | None) -> None:
    """A histogram of the samples under the target's density, normalised on the grid."""
    lo, hi = _finite_range(finite[:, 0], _column(exact, 0))
    grid = np.linspace(lo, hi, 400)
    lp = np.asarray(jax.jit(jax.vmap(target.log_prob))(jnp.asarray(grid[:, None])), dtype=float)
    dens = np.exp(lp - np.nanmax(np.where(np.isfinite(lp), lp, -np.inf)))
    dens = np.where(np.isfinite(dens), dens, 0.0)
    dens /= max(np.trapezoid(dens, grid), 1e-300)
    ax.hist(finite[:, 0], bins=80, range=(lo, hi), density=True, alpha=0.6, label="samples")
    ax.plot(grid, dens, color="k", lw=1.2, label="target")
    ax.set_xlabel("x[0]")
    ax.legend()


def _plot_2d(ax, target: AbstractTarget, finite: np.ndarray, exact: np.ndarray | None) -> None:
    """The samples over filled contours of the log-density (its top 25 nats)."""
    xlo, xhi = _finite_range(finite[:, 0], _column(exact, 0))
    ylo, yhi = _finite_range(finite[:, 1], _column(exact, 1))
    gx, gy = np.meshgrid(np.linspace(xlo, xhi, 200), np.linspace(ylo, yhi, 200))
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
    lp = np.asarray(jax.jit(jax.vmap(target.log_prob))(pts), dtype=float).reshape(gx.shape)
    top = np.nanmax(np.where(np.isfinite(lp), lp, -np.inf))
    if np.isfinite(top):
        ax.contourf(gx, gy, np.clip(lp, top - 25, top), levels=12, cmap="Blues")
    show = finite[:: max(1, len(finite) // 5000)]
    ax.scatter(show[:, 0], show[:, 1], s=2, alpha=0.4, color="C1", label="samples")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")


def _plot_marginals(fig, finite: np.ndarray, exact: np.ndarray | None) -> None:
    """Histograms of the first four marginals, exact samples overlaid where given."""
    k = min(finite.shape[1], 4)
    for i in range(k):
        ax = fig.add_subplot(1, k, i + 1)
        lo, hi = _finite_range(finite[:, i], _column(exact, i))
        ax.hist(finite[:, i], bins=60, range=(lo, hi), density=True, alpha=0.6, label="samples")
        if exact is not None:
            ax.hist(exact[:, i], bins=60, range=(lo, hi), density=True, histtype="step",
                    color="k", label="exact")
        ax.set_xlabel(f"x[{i}]")
        if i == 0:
            ax.legend()


def _exact_samples(target: AbstractTarget, key: PRNGKeyArray, n: int) -> np.ndarray | None:
    if not target.has_exact_samples:
        return None
    try:
        return np.asarray(target.sample(jax.random.fold_in(key, 2), min(n, 5000)))
    except Exception:  # noqa: BLE001 - the plot is still useful without them
        return None


def plot_png(target: AbstractTarget, x: Float[Array, "n d"] | np.ndarray, key: PRNGKeyArray,
             title: str = "") -> bytes:
    """A PNG of samples `x` (n, d) against `target`.

    d <= 2: the samples over the target's (log-)density; d > 2: histograms of the first
    four marginals, with exact samples (drawn with `key`) overlaid where the target has
    them. Non-finite samples are left out of the picture.
    """
    from matplotlib.figure import Figure

    x = np.asarray(x)
    d = x.shape[1]
    finite = x[np.all(np.isfinite(x), axis=1)]
    exact = _exact_samples(target, key, len(x))
    if d <= 2:
        fig = Figure(figsize=(6, 5.5 if d == 2 else 4), layout="constrained")
        (_plot_1d if d == 1 else _plot_2d)(fig.add_subplot(), target, finite, exact)
    else:
        fig = Figure(figsize=(3.2 * min(d, 4), 3.2), layout="constrained")
        _plot_marginals(fig, finite, exact)
    if title:
        fig.suptitle(title)
    return figure_png(fig)
