r"""A differentiable finite-volume Fokker–Planck solver on a box in one or two dimensions.

$\partial_t\rho = -\nabla\cdot(b\rho) + D(t)\Delta\rho$, $D = \tfrac12 g(t)^2$, on a
tensor-product grid of cells, with no-flux boundaries. Each face carries the
Scharfetter–Gummel flux (exact for the steady 1-d flux between two cells; upwind as
$D \to 0$, central diffusion as $b \to 0$) or the plain upwind flux plus central diffusion.
Time steps are implicit Euler, $(I - \Delta t A(t_{n+1}))\rho^{n+1} = \rho^n$: a
tridiagonal solve in 1-d. In 2-d either dimensional splitting (implicit Euler along
$x_1$, then along $x_2$: batched tridiagonal solves, first order in $\Delta t$ like
implicit Euler itself) or the unsplit implicit Euler step solved matrix-free by BiCGStab
(lineax). Both discrete operators have unit column sums, so mass is conserved exactly by
the direct solves and to the solver tolerance by BiCGStab; both keep $\rho \ge 0$ (the
implicit matrices are M-matrices).

Everything is `jax.lax.scan`, so the solution is differentiable in the drift's parameters.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, ScalarLike

SCHEMES = ("scharfetter-gummel", "upwind")
METHODS = ("splitting", "bicgstab")


class Grid(eqx.Module):
    r"""Cells of a box $[\text{lower}, \text{upper}] \subset \mathbb R^d$, $d \in \{1, 2\}$, `cells` per axis.

    Densities on the grid are arrays of shape `cells` holding cell averages (values at the
    cell centres, to second order).
    """

    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    cells: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, lower, upper, cells):
        lower = tuple(float(v) for v in jnp.atleast_1d(jnp.asarray(lower, float)).tolist())
        upper = tuple(float(v) for v in jnp.atleast_1d(jnp.asarray(upper, float)).tolist())
        cells = (cells,) * len(lower) if isinstance(cells, int) else tuple(cells)
        if not (len(lower) == len(upper) == len(cells) and len(lower) in (1, 2)):
            raise ValueError(
                f"a grid needs lower, upper and cells for d = 1 or 2 axes, got lower={lower}, "
                f"upper={upper}, cells={cells}"
            )
        if not all(isinstance(n, int) and n >= 2 for n in cells):
            raise ValueError(f"cells must be integers >= 2, got {cells}")
        if not all(hi > lo for lo, hi in zip(lower, upper)):
            raise ValueError(f"need upper > lower on every axis, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.cells = lower, upper, cells

    @property
    def dim(self) -> int:
        return len(self.cells)

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple((hi - lo) / n for lo, hi, n in zip(self.lower, self.upper, self.cells))

    @property
    def cell_volume(self) -> float:
        v = 1.0
        for h in self.widths:
            v *= h
        return v

    def axis(self, i: int) -> Float[Array, " n"]:
        """Cell centres along axis `i`."""
        lo, h, n = self.lower[i], self.widths[i], self.cells[i]
        return lo + h * (jnp.arange(n) + 0.5)

    def points(self) -> Float[Array, "*cells d"]:
        """Cell centres, shape `(*cells, d)`."""
        return jnp.stack(jnp.meshgrid(*[self.axis(i) for i in range(self.dim)], indexing="ij"), -1)

    def evaluate(self, fn: Callable[[Float[Array, " d"]], Array]) -> Array:
        """`fn` at every cell centre (vmapped), shape `(*cells, ...)`."""
        pts = self.points()
        flat = jax.vmap(fn)(pts.reshape(-1, self.dim))
        return flat.reshape(*self.cells, *flat.shape[1:])

    def density(self, log_prob: Callable[[Float[Array, " d"]], Array]) -> Array:
        """`exp(log_prob)` at the centres, normalised to unit mass on the grid."""
        log_rho = self.evaluate(log_prob)
        log_rho = log_rho - jax.nn.logsumexp(log_rho) - jnp.log(self.cell_volume)
        return jnp.exp(log_rho)

    def mass(self, rho: Array) -> Array:
        return jnp.sum(rho) * self.cell_volume

    def l2(self, rho: Array, other: Array) -> Array:
        r"""$\|\rho - \text{other}\|_{L^2}$ by the midpoint rule."""
        return jnp.sqrt(jnp.sum((rho - other) ** 2) * self.cell_volume)

    def faces(self, axis: int) -> Float[Array, "... d"]:
        """Centres of the interior faces normal to `axis`: shape `cells` with `cells[axis] - 1`."""
        axes = [self.axis(i) for i in range(self.dim)]
        axes[axis] = self.lower[axis] + self.widths[axis] * jnp.arange(1, self.cells[axis])
        return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1)


def bernoulli(z: Array) -> Array:
    r"""$B(z) = z / (e^z - 1)$, $B(0) = 1$, without overflow and with finite gradients.

    Through $B(-a) = B(a) + a$ only $B(a) = a e^{-a} / (1 - e^{-a})$ for $a = |z| \ge 0$ is
    evaluated; a series is used for $|z| < 10^{-3}$.
    """
    a = jnp.abs(z)
    small = a < 1e-3
    a_safe = jnp.where(small, 1.0, a)
    b_pos = jnp.where(small, 1 - a / 2 + a**2 / 12, a_safe * jnp.exp(-a_safe) / -jnp.expm1(-a_safe))
    return jnp.where(z >= 0, b_pos, b_pos + a)


def face_coefficients(b: Array, D: ScalarLike, h: float, scheme: str) -> tuple[Array, Array]:
    r"""`(alpha, beta)` with the flux through a face $J = \alpha\rho_- - \beta\rho_+$.

    `b`: the drift component normal to the face; `D`: the diffusion coefficient; `h`: the
    distance between the two cell centres. Scharfetter–Gummel:
    $\alpha = \tfrac Dh B(-P)$, $\beta = \tfrac Dh B(P)$, $P = bh/D$ (upwind when $D = 0$);
    upwind: $\alpha = b^+ + D/h$, $\beta = b^- + D/h$.
    """
    up_a, up_b = jnp.maximum(b, 0.0), jnp.maximum(-b, 0.0)
    if scheme == "upwind":
        return up_a + D / h, up_b + D / h
    positive = D > 0
    D_safe = jnp.where(positive, D, 1.0)
    P = b * h / D_safe
    alpha = jnp.where(positive, D_safe / h * bernoulli(-P), up_a)
    beta = jnp.where(positive, D_safe / h * bernoulli(P), up_b)
    return alpha, beta


def _tridiagonal(alpha, beta, dt, h):
    """Diagonals of `I - dt A` for the faces' `(alpha, beta)` (shape `(..., n - 1)`)."""
    zero = jnp.zeros_like(alpha[..., :1])
    a_right = jnp.concatenate([alpha, zero], -1)  # face i+1/2 of cell i
    b_left = jnp.concatenate([zero, beta], -1)  # face i-1/2 of cell i
    diag = 1 + dt / h * (a_right + b_left)
    upper = jnp.concatenate([-dt / h * beta, zero], -1)
    lower = jnp.concatenate([zero, -dt / h * alpha], -1)
    return lower, diag, upper


def _solve_along(rho, alpha, beta, dt, h, axis):
    """One implicit Euler step with the fluxes along `axis` only (batched tridiagonal)."""
    rho_m = jnp.moveaxis(rho, axis, -1)
    a_m, b_m = jnp.moveaxis(alpha, axis, -1), jnp.moveaxis(beta, axis, -1)
    lower, diag, upper = _tridiagonal(a_m, b_m, dt, h)
    out = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rho_m[..., None])[..., 0]
    return jnp.moveaxis(out, -1, axis)


def _apply_operator(rho, coefficients, widths):
    r"""$A\rho = -\sum_{\text{axes}} (J_{i+1/2} - J_{i-1/2}) / h$ with zero boundary fluxes."""
    out = jnp.zeros_like(rho)
    for axis, ((alpha, beta), h) in enumerate(zip(coefficients, widths)):
        n = rho.shape[axis]
        lo = jax.lax.slice_in_dim(rho, 0, n - 1, axis=axis)
        hi = jax.lax.slice_in_dim(rho, 1, n, axis=axis)
        J = alpha * lo - beta * hi
        pad = [(0, 0)] * rho.ndim
        pad[axis] = (1, 1)
        J = jnp.pad(J, pad)
        out = out - (jax.lax.slice_in_dim(J, 1, n + 1, axis=axis) - jax.lax.slice_in_dim(J, 0, n, axis=axis)) / h
    return out


class FokkerPlanck(eqx.Module):
    r"""The Fokker–Planck equation $\partial_t\rho = -\nabla\cdot(b\rho) + \tfrac12 g(t)^2\Delta\rho$ on a `Grid`.

    **Fields:**

    - `drift`: $b(t, x)$ for one point, `(d,)` to `(d,)` (any callable pytree, e.g. an
      equinox module: its parameters can be differentiated through `solve`).
    - `diffusion`: $g(t)$, a callable of `t` or a number (`0.0`: pure transport, upwind).
    - `grid`: the `Grid`.
    - `scheme`: `"scharfetter-gummel"` (default) or `"upwind"`.
    - `method`: in 2-d, `"splitting"` (default: implicit Euler along each axis in turn) or
      `"bicgstab"` (the unsplit implicit Euler step, solved to `rtol`/`atol`); 1-d is
      always a direct tridiagonal solve.
    """

    drift: Callable
    diffusion: Callable | float
    grid: Grid
    scheme: str = eqx.field(static=True, default="scharfetter-gummel")
    method: str = eqx.field(static=True, default="splitting")
    rtol: float = eqx.field(static=True, default=1e-10)
    atol: float = eqx.field(static=True, default=1e-12)
    max_steps: int = eqx.field(static=True, default=1000)

    def __check_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def _D(self, t):
        g = self.diffusion(t) if callable(self.diffusion) else jnp.asarray(self.diffusion)
        return 0.5 * g**2

    def coefficients(self, t: ScalarLike) -> list[tuple[Array, Array]]:
        """`(alpha, beta)` on the interior faces normal to each axis at time `t`."""
        D = self._D(t)
        out = []
        for axis in range(self.grid.dim):
            faces = self.grid.faces(axis)
            b = jax.vmap(lambda x: self.drift(t, x)[axis])(faces.reshape(-1, self.grid.dim))
            b = b.reshape(faces.shape[:-1])
            out.append(face_coefficients(b, D, self.grid.widths[axis], self.scheme))
        return out

    def operator(self, t: ScalarLike, rho: Array) -> Array:
        r"""$A(t)\rho$, the right-hand side of the semi-discrete equation."""
        return _apply_operator(rho, self.coefficients(t), self.grid.widths)

    def step(self, rho: Array, t_next: ScalarLike, dt: ScalarLike) -> Array:
        """One implicit Euler step of length `dt` ending at `t_next`."""
        coefficients = self.coefficients(t_next)
        if self.grid.dim == 1 or self.method == "splitting":
            for axis, ((alpha, beta), h) in enumerate(zip(coefficients, self.grid.widths)):
                rho = _solve_along(rho, alpha, beta, dt, h, axis)
            return rho
        op = lx.FunctionLinearOperator(
            lambda r: r - dt * _apply_operator(r, coefficients, self.grid.widths),
            jax.eval_shape(lambda: rho),
        )
        solver = lx.BiCGStab(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
        return lx.linear_solve(op, rho, solver, options={"y0": rho}).value

    @eqx.filter_jit
    def solve(self, rho0: Array, ts: Float[Array, " K+1"], substeps: int = 1) -> Float[Array, "K+1 *cells"]:
        r"""The density at each of `ts` (increasing), from `rho0` at `ts[0]`.

        Each interval $[t_k, t_{k+1}]$ takes `substeps` equal implicit Euler steps.
        """
        ts = jnp.asarray(ts, rho0.dtype)

        def interval(rho, t_pair):
            t0, t1 = t_pair
            dt = (t1 - t0) / substeps

            def inner(r, i):
                return self.step(r, t0 + (i + 1) * dt, dt), None

            rho, _ = jax.lax.scan(inner, rho, jnp.arange(substeps))
            return rho, rho

        _, rhos = jax.lax.scan(interval, rho0, (ts[:-1], ts[1:]))
        return jnp.concatenate([rho0[None], rhos])
