r"""Discrete-time paths with exact importance weights: the one simulator under every sampler.

A path $x_0 \to x_1 \to \dots \to x_K$ over a grid $t_0, \dots, t_K$ is drawn with Gaussian
*forward kernels* $F_k(x_k \mid x_{k-1}) = \mathcal N(m_F(x_{k-1}), \Sigma_F)$ and scored
against Gaussian *backward kernels* $B_k(x_{k-1} \mid x_k) = \mathcal N(m_B(x_k), \Sigma_B)$.
With a start density $\nu$ and an end density $\gamma$ (unnormalised), the log-weight

$$\log w = \log\gamma(x_K) - \log\nu(x_0) + \sum_{k=1}^K \big[\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})\big]$$

is an exact importance weight of the whole trajectory for *any* grid and any kernels:
$\mathbb E[w] = Z$. `simulate` returns the sum (the *path log-ratio*) and the caller adds
the two end terms, which for a segment of an annealed path are the intermediate
densities $\log\pi_{k_1}(x_{k_1}) - \log\pi_{k_0}(x_{k_0})$: run segments one after the
other, resampling between them, from the particles the last one returned.

A kernel is a function `kernel(s, t, x) -> (mean, std)` for **one** point `x` of shape
`(d,)` (the simulator `vmap`s it), between grid times `s = t_{k-1}` and `t = t_k`: the
forward kernel gives the law of $x_k$ given $x_{k-1} = $ `x`, the backward kernel that of
$x_{k-1}$ given $x_k = $ `x`. `std` is a scalar or a `(d,)` vector (a diagonal
covariance) that must not depend on `x` (it is shared by all particles). Kernels that
share work at a state (both Langevin kernels need $\nabla\log\gamma(x_k)$) take it as a
fourth argument, `kernel(s, t, x, p)`, from a `point(t, x)` function that `simulate`
evaluates once per state.

The grid `ts` is an array of $K + 1$ times, or any pytree of arrays with a leading axis
of length $K + 1$: per-step parameters such as an annealing schedule $\beta_k$ and step
sizes $\varepsilon_k$ (`{"beta": beta, "eps": eps}`); the kernels then receive the
pytree's entries at $k - 1$ and $k$ as `s` and `t`.

*Splitting integrators* (underdamped Langevin with a leapfrog step) alternate a Gaussian
step with a deterministic one: `move(s, t, y, p) -> (x, p_x)` maps each drawn point `y` to
the next state `x`, a bijection with unit Jacobian (volume-preserving), and returns the new
state's point value too (it may reuse what it computed); `p` is the point value of the
state the step started from. The backward kernel is then the Gaussian reverse of the draw:
evaluated at `y` (before the move) with the point value of the new state `x`, it gives the
law of $x_{k-1}$; no Jacobian enters the weight. `simulate_backward` needs the inverse,
`move_back(s, t, x, p_x) -> y`. Coordinates whose std is 0 in both kernels (a position that
the Gaussian step leaves unchanged) are point masses and add nothing to the log-ratio.

The per-step terms are formed as one difference
($\tfrac12(|z_F|^2 - |z_B|^2) + \sum\log(\sigma_F/\sigma_B)$; the $2\pi$ terms cancel) and
summed from zero with compensated (Kahan) summation, so rounding does not grow with $K$.
"""

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

Kernel = Callable[[PyTree, PyTree, Float[Array, " d"]], tuple[Float[Array, " d"], Array]]
"""`kernel(s, t, x) -> (mean, std)`: a Gaussian kernel between grid points `s` and `t`
(times, or the per-step entries of a pytree grid)."""

Grid = Float[Array, " K+1"] | PyTree
"""An array of $K + 1$ grid times, or a pytree of arrays with that leading axis."""

PointFn = Callable[[PyTree, Float[Array, " d"]], PyTree]
"""`point(t, x) -> pytree`: what the kernels need of one state, computed once per state."""

Move = Callable[[PyTree, PyTree, Float[Array, " d"], PyTree], tuple[Float[Array, " d"], PyTree]]
"""`move(s, t, y, p) -> (x, p_x)`: a deterministic volume-preserving map after each draw."""

MoveBack = Callable[[PyTree, PyTree, Float[Array, " d"], PyTree], Float[Array, " d"]]
"""`move_back(s, t, x, p_x) -> y`: the inverse of a `Move`."""

StepStats = Callable[..., PyTree]
"""`stats(s, t, x, x_new, log_ratio) -> pytree`: statistics of one step, for all particles."""


class Path(eqx.Module):
    """A batch of simulated paths.

    **Fields:**

    - `x`: `(n, d)` the last state of each path ($x_K$, or $x_0$ for `simulate_backward`).
    - `x_start`: `(n, d)` the state each path started from.
    - `log_ratio`: `(n,)` $\\sum_k \\log B_k - \\log F_k$ along each path (zeros when no
      backward kernel was given).
    - `stats`: what the `stats` function returned at each step, stacked on a leading
      axis of length $K$ (in the order simulated), or `None`.
    """

    x: Float[Array, "n d"]
    x_start: Float[Array, "n d"]
    log_ratio: Float[Array, " n"]
    stats: PyTree | None = None

    def log_weights(
        self,
        log_end: Callable[[Float[Array, " d"]], Array],
        log_start: Callable[[Float[Array, " d"]], Array],
    ) -> Float[Array, " n"]:
        r"""$\log\gamma(x_\text{end}) - \log\nu(x_\text{start}) + $ `log_ratio`: the exact
        log-weights, given the end and start log-densities for one point."""
        ends = jax.vmap(log_end)(self.x) - jax.vmap(log_start)(self.x_start)
        return self.log_ratio + ends


def gaussian_log_ratio(
    x: Array, mean_b: Array, std_b: Array, y: Array, mean_f: Array, std_f: Array
) -> Array:
    r"""$\log\mathcal N(x; m_B, \sigma_B^2) - \log\mathcal N(y; m_F, \sigma_F^2)$, summed
    over the last axis and formed as one difference. Stds are scalars or per-coordinate;
    coordinates whose std is 0 in both kernels are point masses and contribute 0 (the
    caller keeps them equal to their means)."""
    if jnp.ndim(std_b) or jnp.ndim(std_f):
        std_b, std_f, x, mean_b, y, mean_f = _point_masses_removed(std_b, std_f, x, mean_b, y, mean_f)
    z_b, z_f = (x - mean_b) / std_b, (y - mean_f) / std_f
    # log of the ratio, not a difference of logs: exactly 0 where the two stds are equal
    # (the optimal kernels), where log(a) - log(a) need not be when the two logs are
    # evaluated by different (vectorised or scalar) code
    log_std = jnp.log(std_f / std_b)
    log_std = x.shape[-1] * log_std if jnp.ndim(log_std) == 0 else jnp.sum(log_std, -1)
    return 0.5 * (jnp.sum(z_f**2, -1) - jnp.sum(z_b**2, -1)) + log_std


def _point_masses_removed(std_b, std_f, *values):
    """Stds of 1 and residuals of 0 where both stds are 0, so that those coordinates add
    nothing (with finite gradients) to `gaussian_log_ratio`."""
    mass = (std_b == 0) & (std_f == 0)
    x, mean_b, y, mean_f = (jnp.where(mass, 0.0, v) for v in values)
    return jnp.where(mass, 1.0, std_b), jnp.where(mass, 1.0, std_f), x, mean_b, y, mean_f


def _kahan_add(total: tuple[Array, Array], value: Array) -> tuple[Array, Array]:
    """Compensated summation: add `value` to `total = (sum, compensation)`."""
    s, c = total
    y = value - c
    t = s + y
    return t, (t - s) - y


def remat_scan(step, carry, xs):
    r"""`lax.scan(step, carry, xs)` with memory $O(\sqrt K)$ in its length $K$ for gradients.

    The $K$ steps run as an outer scan over segments of $c$ steps ($c$ the divisor of $K$
    nearest $\sqrt K$ from below); each segment and each step is a `jax.checkpoint`, so
    the backward pass stores $K/c$ segment-start carries and recomputes one segment at a
    time. Same values and gradients as `lax.scan`.
    """
    K = jax.tree.leaves(xs)[0].shape[0]
    c = max(i for i in range(1, math.isqrt(K) + 1) if K % i == 0)
    segments = jax.tree.map(lambda a: a.reshape(K // c, c, *a.shape[1:]), xs)
    inner = jax.checkpoint(step, prevent_cse=False)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def segment(carry, seg):
        return jax.lax.scan(inner, carry, seg)

    carry, ys = jax.lax.scan(segment, carry, segments)
    return carry, jax.tree.map(lambda a: a.reshape(K, *a.shape[2:]), ys)


def _normal(k: PRNGKeyArray, x: Array) -> Array:
    return jax.random.normal(k, x.shape, x.dtype)


def _on_shards(run, sharding, key, x, ts, fns) -> Path:
    """`run(key, x, ts, fns, draw)`, with the particles split over the 1-D mesh of `sharding`.

    Each device simulates its own particles (`jax.shard_map`); the arrays the kernels hold
    (parameters) and the grid enter replicated, as one vector, and are cast to per-device
    values once, at the start, so that the gradient with respect to them is summed across
    devices in one reduction per call, not one per step and array. Each device draws the
    noise of all `n` particles and keeps its rows, so the random numbers are those of the
    unsharded run.
    """
    if sharding is None:
        return run(key, x, ts, fns, _normal)
    mesh, axis, n = sharding.mesh, sharding.spec[0], x.shape[0]
    arrays, static = eqx.partition((ts, fns), eqx.is_inexact_array)
    flat, unflatten = jax.flatten_util.ravel_pytree(arrays)  # one vector: one reduction

    def local(key, x, flat):
        ts, fns = eqx.combine(unflatten(jax.lax.pcast(flat, axis, to="varying")), static)
        start = jax.lax.axis_index(axis) * x.shape[0]

        def draw(k, y):
            every = jax.random.normal(k, (n, *y.shape[1:]), y.dtype)
            return jax.lax.dynamic_slice_in_dim(every, start, y.shape[0])

        return run(key, x, ts, fns, draw)

    P = jax.sharding.PartitionSpec
    stats = None if fns[-1] is None else P(None, axis)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()),
                         out_specs=Path(P(axis), P(axis), P(axis), stats))(key, x, flat)


def _run(step, carry, xs, remat: bool, reverse: bool = False):
    if remat:
        if reverse:
            xs = jax.tree.map(lambda a: a[::-1], xs)
        carry, ys = remat_scan(step, carry, xs)
        return carry, (jax.tree.map(lambda a: a[::-1], ys) if reverse else ys)
    return jax.lax.scan(step, carry, xs, reverse=reverse)


def _steps(ts: Grid, key: PRNGKeyArray) -> tuple[PyTree, PyTree, Array]:
    """`(ts[:-1], ts[1:], keys)`: the scanned inputs of the K steps of the grid `ts`."""
    lengths = {a.shape[0] for a in jax.tree.leaves(ts)}
    if len(lengths) != 1 or min(lengths) < 2:
        raise ValueError(
            f"the grid must be an array of K + 1 >= 2 points, or a pytree of arrays with one "
            f"leading length K + 1 >= 2; got leading lengths {sorted(lengths)}"
        )
    keys = jax.random.split(key, lengths.pop() - 1)
    return jax.tree.map(lambda a: a[:-1], ts), jax.tree.map(lambda a: a[1:], ts), keys


def _vectorised(forward: Kernel, backward: Kernel | None, point: PointFn | None):
    """The kernels and the point function, each `vmap`ped over the particles; without a
    point function, kernels of `(s, t, x)` are called with a point value `None`."""
    if point is None:
        point = lambda t, x: None  # noqa: E731
        forward = _ignoring_points(forward)
        backward = None if backward is None else _ignoring_points(backward)
    per_point = lambda k: jax.vmap(k, in_axes=(None, None, 0, 0), out_axes=(0, None))  # noqa: E731
    return (per_point(forward), None if backward is None else per_point(backward),
            jax.vmap(point, in_axes=(None, 0)))


def _moved(move: Move | None, at):
    """`move` `vmap`ped over the particles; without one, the identity with a new point value."""
    if move is None:
        return lambda s, t, y, p: (y, at(t, y))
    return _per_particle(move)


def _undone(move_back: MoveBack | None):
    """`move_back` `vmap`ped over the particles; without one, the identity."""
    return (lambda s, t, x, p: x) if move_back is None else _per_particle(move_back)


def _per_particle(fn):
    return jax.vmap(fn, in_axes=(None, None, 0, 0))


def _ignoring_points(kernel: Kernel):
    return lambda s, t, x, p: kernel(s, t, x)


def _entry(ts: Grid, k: int) -> PyTree:
    return jax.tree.map(lambda a: a[k], ts)


def simulate(
    key: PRNGKeyArray,
    x0: Float[Array, "n d"],
    ts: Grid,
    forward: Kernel,
    backward: Kernel | None = None,
    *,
    point: PointFn | None = None,
    move: Move | None = None,
    noise: float = 1.0,
    detach: bool = False,
    remat: bool = False,
    stats: StepStats | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Path:
    r"""Simulate paths from `x0` over the grid `ts` with the forward kernels.

    Each step draws $x_k = m_F(x_{k-1}) + \text{noise}\cdot\sigma_F\,\varepsilon$ and adds
    $\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})$ to the path log-ratio (none
    without `backward`). With `noise = 1` the log-ratio gives exact importance weights;
    with `noise > 1` the paths explore more widely while the log-ratio still uses $F_k$
    (for losses, such as the log-variance, that are zero at the optimum under any law).

    - `point(t, x)`: what both kernels need of a state (a target gradient, a network's
      output), evaluated once per state at the state's own grid entry, and passed to the
      kernels as a fourth argument: the forward kernel of step $k$ gets that of $x_{k-1}$,
      the backward kernel that of $x_k$ (which the next forward kernel reuses).
    - `move(s, t, y, p) -> (x, p_x)`: a volume-preserving map from each draw `y` to the
      next state (see the module's docs); the backward kernel is evaluated at `y`.
    - `detach`: stop gradients through each new state (off-policy training).
    - `remat`: rematerialise the steps in the backward pass, memory $O(\sqrt K)$.
    - `stats(s, t, x, x_new, log_ratio_k)`: per-step statistics, returned stacked in
      `Path.stats`.
    - `sharding`: a sharding of the particle axis (applied to the states and log-ratios).

    The random numbers depend only on `key` and the shapes, not on `remat` or `sharding`.
    """
    run = functools.partial(_forward_paths, noise=noise, detach=detach, remat=remat)
    return _on_shards(run, sharding, key, x0, ts, (forward, backward, point, move, stats))


def _forward_paths(key, x0, ts, fns, draw, *, noise, detach, remat) -> Path:
    forward, backward, point, move, stats = fns
    fwd, bwd, at = _vectorised(forward, backward, point)
    moved = _moved(move, at)

    def step(carry, inputs):
        x, p, total = carry
        s, t, k = inputs
        mean, std = fwd(s, t, x, p)
        y = mean + (noise * std) * draw(k, x)
        if detach:
            y = jax.lax.stop_gradient(y)
        x_new, p_new = moved(s, t, y, p)
        if bwd is None:
            increment = jnp.zeros(x.shape[0], x.dtype)
        else:
            mean_b, std_b = bwd(s, t, y, p_new)
            increment = gaussian_log_ratio(x, mean_b, std_b, y, mean, std)
        out = None if stats is None else stats(s, t, x, x_new, increment)
        return (x_new, p_new, _kahan_add(total, increment)), out

    zero = jnp.zeros_like(x0[:, 0])  # varying over the devices, like x0
    inputs = _steps(ts, key)
    (x, _, (log_ratio, _)), out = _run(step, (x0, at(_entry(ts, 0), x0), (zero, zero)), inputs, remat)
    return Path(x, x0, log_ratio, out)


def simulate_backward(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    ts: Grid,
    forward: Kernel,
    backward: Kernel,
    *,
    point: PointFn | None = None,
    move_back: MoveBack | None = None,
    remat: bool = False,
    stats: StepStats | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Path:
    r"""Simulate paths from end points `x` (at `ts[-1]`) back to `ts[0]` with the backward
    kernels, and their log-ratios $\sum_k \log B_k - \log F_k$ (the same sign as `simulate`).
    `move_back(s, t, x, p_x) -> y` inverts the `move` of `simulate`: each step undoes the
    move, then draws from the backward kernel at `y`.

    The returned `Path` has `x` $= x_0$ and `x_start` $= x_K$ (the given points);
    `backward_log_weights(path, log_gamma, log_nu)` gives the log-weights, whose mean over
    $x \sim \pi$ is the EUBO. `stats` are stacked in grid order.
    """
    run = functools.partial(_backward_paths, remat=remat)
    return _on_shards(run, sharding, key, x, ts, (forward, backward, point, move_back, stats))


def _backward_paths(key, x, ts, fns, draw, *, remat) -> Path:
    forward, backward, point, move_back, stats = fns
    fwd, bwd, at = _vectorised(forward, backward, point)
    undo = _undone(move_back)

    def step(carry, inputs):
        x_k, p, total = carry
        s, t, k = inputs
        y = undo(s, t, x_k, p)
        mean_b, std_b = bwd(s, t, y, p)
        x_prev = mean_b + std_b * draw(k, y)
        p_prev = at(s, x_prev)
        mean, std = fwd(s, t, x_prev, p_prev)
        increment = gaussian_log_ratio(x_prev, mean_b, std_b, y, mean, std)
        out = None if stats is None else stats(s, t, x_prev, x_k, increment)
        return (x_prev, p_prev, _kahan_add(total, increment)), out

    zero = jnp.zeros_like(x[:, 0])  # varying over the devices, like x
    inputs = _steps(ts, key)
    end = at(_entry(ts, -1), x)
    (x0, _, (log_ratio, _)), out = _run(step, (x, end, (zero, zero)), inputs, remat, reverse=True)
    return Path(x0, x, log_ratio, out)


def path_log_ratio(
    xs: Float[Array, "K+1 n d"],
    ts: Grid,
    forward: Kernel,
    backward: Kernel,
    *,
    point: PointFn | None = None,
    move_back: MoveBack | None = None,
) -> Float[Array, " n"]:
    r"""$\sum_k \log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})$ of given paths
    `xs` (states $x_0, \dots, x_K$ on the leading axis), under the kernels as they are now:
    paths simulated earlier (a replay buffer) re-scored under new parameters. The same
    terms as the log-ratio `simulate` returns, computed for all steps at once; with
    `move_back`, each step's Gaussian terms are at the pre-move point $y_k$ of $x_k$.
    """
    fwd, bwd, at = _vectorised(forward, backward, point)
    undo = _undone(move_back)
    points = jax.vmap(at)(ts, xs)

    def step(s, t, x, p, x_new, p_new):
        y = undo(s, t, x_new, p_new)
        mean, std = fwd(s, t, x, p)
        mean_b, std_b = bwd(s, t, y, p_new)
        return gaussian_log_ratio(x, mean_b, std_b, y, mean, std)

    head = lambda tree: jax.tree.map(lambda a: a[:-1], tree)  # noqa: E731
    tail = lambda tree: jax.tree.map(lambda a: a[1:], tree)  # noqa: E731
    terms = jax.vmap(step)(head(ts), tail(ts), xs[:-1], head(points), xs[1:], tail(points))
    return jnp.sum(terms, axis=0)


def backward_log_weights(
    path: Path,
    log_end: Callable[[Float[Array, " d"]], Array],
    log_start: Callable[[Float[Array, " d"]], Array],
) -> Float[Array, " n"]:
    r"""The log-weights $\log\gamma(x_K) - \log\nu(x_0) + \sum_k[\log B_k - \log F_k]$ of
    paths from `simulate_backward` (whose `x` is $x_0$ and `x_start` is $x_K$)."""
    ends = jax.vmap(log_end)(path.x_start) - jax.vmap(log_start)(path.x)
    return path.log_ratio + ends
