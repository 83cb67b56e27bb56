"""The path simulator (`sdekit.simulate`, `simulate_backward`) against exact Gaussian answers.

The backward kernels are linear Gaussian, $B_k(x_{k-1} \\mid x_k) = \\mathcal N(a_k x_k + b_k,
c_k^2 I)$, and the end density is $\\gamma = Z\\,\\mathcal N(m, v I)$, so every marginal of the
backward chain started from $\\pi = \\gamma / Z$ is Gaussian and known in closed form. With
$\\nu$ the marginal at $t_0$ and the forward kernels the exact time reversal of that chain,
every path has weight exactly $Z$; with other forward kernels, $\\mathbb E[w] = Z$ and
$\\mathbb E[\\log w] \\le \\log Z \\le$ the EUBO.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdekit

D, K = 3, 12
LOG_Z = 1.7
M, V = 0.5, 0.8  # the target N(M, V I)
TS = jnp.arange(K + 1, dtype=float)  # the grid indexes the per-step coefficients

_k = jnp.arange(1, K + 1, dtype=float)
A = 0.9 - 0.02 * _k  # B_k: x_{k-1} = A[k-1] x_k + B[k-1] + C[k-1] eps
B = 0.05 * jnp.sin(_k)
C = 0.3 + 0.01 * _k


def _marginals():
    """Means and variances of x_k, k = 0..K, of the backward chain started at x_K ~ N(M, V)."""
    m, v = [M], [V]
    for k in range(K, 0, -1):
        m.append(float(A[k - 1]) * m[-1] + float(B[k - 1]))
        v.append(float(A[k - 1]) ** 2 * v[-1] + float(C[k - 1]) ** 2)
    return jnp.asarray(m[::-1]), jnp.asarray(v[::-1])


MEANS, VARS = _marginals()


def _idx(t):
    return jnp.asarray(t, int) - 1


def backward(s, t, x):
    k = _idx(t)
    return A[k] * x + B[k], C[k]


def exact_forward(s, t, x):
    """The time reversal of the backward chain: the law of x_k given x_{k-1} under it."""
    k = _idx(t)
    cov = A[k] * VARS[k + 1]  # Cov(x_{k-1}, x_k)
    mean = MEANS[k + 1] + cov / VARS[k] * (x - MEANS[k])
    return mean, jnp.sqrt(VARS[k + 1] - cov**2 / VARS[k])


def shifted_forward(theta):
    """The exact reversal with its mean shifted by `theta` and its std widened by 10 %."""

    def forward(s, t, x):
        mean, std = exact_forward(s, t, x)
        return mean + theta, 1.1 * std

    return forward


def log_gamma(x):
    return LOG_Z + jnp.sum(-0.5 * (x - M) ** 2 / V - 0.5 * jnp.log(2 * jnp.pi * V))


def log_nu(x):
    return jnp.sum(-0.5 * (x - MEANS[0]) ** 2 / VARS[0] - 0.5 * jnp.log(2 * jnp.pi * VARS[0]))


def _start(key, n):
    return MEANS[0] + jnp.sqrt(VARS[0]) * jax.random.normal(key, (n, D))


def _forward_log_weights(key, forward, n, **kwargs):
    k0, k1 = jax.random.split(key)
    path = sdekit.simulate(k1, _start(k0, n), TS, forward, backward, **kwargs)
    return path, path.log_weights(log_gamma, log_nu)


def test_exact_reversal_gives_constant_weights():
    _, log_w = _forward_log_weights(jax.random.key(0), exact_forward, 1000)
    # float32 rounding of K steps' terms, each O(D): far below any Monte-Carlo scale
    np.testing.assert_allclose(np.asarray(log_w), LOG_Z, atol=2e-4)


def test_exact_reversal_reaches_the_target():
    path, _ = _forward_log_weights(jax.random.key(1), exact_forward, 20_000)
    n = path.x.size
    # mean and variance of n standard normal draws: standard errors 1/sqrt(n), sqrt(2/n)
    z = (path.x - M) / math.sqrt(V)
    assert abs(float(jnp.mean(z))) < 5 / math.sqrt(n)
    assert abs(float(jnp.var(z)) - 1) < 5 * math.sqrt(2 / n)


def test_log_Z_estimate_and_bounds():
    """Approximate kernels: log Ẑ unbiased for log Z to first order (within 5 delta-method
    standard errors), ELBO < log Z < EUBO by more than 5 standard errors each."""
    n = 20_000
    forward = shifted_forward(0.05)
    _, log_w = _forward_log_weights(jax.random.key(2), forward, n)
    w = jnp.exp(log_w - jnp.max(log_w))
    se_log_Z = float(jnp.std(w) / jnp.mean(w)) / math.sqrt(n)
    log_Z_hat = float(sdekit.log_Z_estimate(log_w))
    assert abs(log_Z_hat - LOG_Z) < 5 * se_log_Z + 1e-4

    x = M + math.sqrt(V) * jax.random.normal(jax.random.key(3), (n, D))
    path_b = sdekit.simulate_backward(jax.random.key(4), x, TS, forward, backward)
    log_w_b = sdekit.backward_log_weights(path_b, log_gamma, log_nu)
    elbo, eubo = float(jnp.mean(log_w)), float(jnp.mean(log_w_b))
    se_elbo = float(jnp.std(log_w)) / math.sqrt(n)
    se_eubo = float(jnp.std(log_w_b)) / math.sqrt(n)
    assert elbo + 5 * se_elbo < LOG_Z < eubo - 5 * se_eubo


def test_backward_paths_of_the_exact_reversal_have_constant_weights():
    x = M + math.sqrt(V) * jax.random.normal(jax.random.key(5), (500, D))
    path = sdekit.simulate_backward(jax.random.key(6), x, TS, exact_forward, backward)
    np.testing.assert_allclose(np.asarray(sdekit.backward_log_weights(path, log_gamma, log_nu)), LOG_Z, atol=2e-4)
    # the backward chain from the target ends in the start law
    z = (path.x - MEANS[0]) / jnp.sqrt(VARS[0])
    assert abs(float(jnp.mean(z))) < 5 / math.sqrt(z.size)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_remat_gives_identical_values_and_gradients(direction):
    key, x = jax.random.key(7), _start(jax.random.key(8), 64)

    def objective(theta, remat):
        if direction == "forward":
            path = sdekit.simulate(key, x, TS, shifted_forward(theta), backward, remat=remat)
            return jnp.mean(path.log_weights(log_gamma, log_nu))
        path = sdekit.simulate_backward(key, x, TS, shifted_forward(theta), backward, remat=remat)
        return jnp.mean(sdekit.backward_log_weights(path, log_gamma, log_nu))

    plain = jax.value_and_grad(objective)(0.1, False)
    remat = jax.value_and_grad(objective)(0.1, True)
    np.testing.assert_allclose(np.asarray(remat), np.asarray(plain), rtol=1e-6)
    assert float(plain[1]) != 0


def test_stats_are_stacked_per_step_in_grid_order():
    def stats(s, t, x, x_new, log_ratio):
        return {"t": t, "log_ratio": log_ratio, "mean": jnp.mean(x_new, 0)}

    x0 = _start(jax.random.key(9), 16)
    path = sdekit.simulate(jax.random.key(10), x0, TS, exact_forward, backward, stats=stats)
    assert path.stats["log_ratio"].shape == (K, 16)
    assert path.stats["mean"].shape == (K, D)
    np.testing.assert_array_equal(np.asarray(path.stats["t"]), np.asarray(TS[1:]))
    np.testing.assert_allclose(np.asarray(path.stats["log_ratio"].sum(0)), np.asarray(path.log_ratio), rtol=1e-5, atol=1e-5)

    back = sdekit.simulate_backward(jax.random.key(11), x0, TS, exact_forward, backward, stats=stats)
    np.testing.assert_array_equal(np.asarray(back.stats["t"]), np.asarray(TS[1:]))
    assert back.stats["log_ratio"].shape == (K, 16)


def test_without_backward_kernels_the_log_ratio_is_zero_and_noise_scales_the_steps():
    x0 = jnp.zeros((4, D))

    def still(s, t, x):
        return x, jnp.asarray(1.0)

    key = jax.random.key(12)
    one = sdekit.simulate(key, x0, TS, still)
    two = sdekit.simulate(key, x0, TS, still, noise=2.0)
    np.testing.assert_array_equal(np.asarray(one.log_ratio), 0.0)
    np.testing.assert_allclose(np.asarray(two.x), 2 * np.asarray(one.x), rtol=1e-6)


def test_segments_chain_into_one_path():
    """Two segments, the second from the particles the first returned, carry the same
    log-ratio as one simulation over the whole grid with the same per-step keys."""
    x0 = _start(jax.random.key(13), 32)
    keys = jax.random.split(jax.random.key(14), 2)
    first = sdekit.simulate(keys[0], x0, TS[:7], exact_forward, backward)
    second = sdekit.simulate(keys[1], first.x, TS[6:], exact_forward, backward)
    chained = first.log_ratio + second.log_ratio
    log_w = chained + jax.vmap(log_gamma)(second.x) - jax.vmap(log_nu)(x0)
    np.testing.assert_allclose(np.asarray(log_w), LOG_Z, atol=2e-4)


def test_a_pytree_grid_hands_each_kernel_its_steps_entries():
    """A grid of per-step parameters: the kernels get the entries at k - 1 and k, and the
    paths are those of the plain grid they index (same keys, same numbers)."""
    grid = {"time": TS, "half": TS / 2}

    def on_entries(kernel):
        def k(s, t, x):
            assert s["half"].shape == t["time"].shape == ()
            return kernel(s["half"] * 2, t["time"], x)

        return k

    x0, key = _start(jax.random.key(15), 16), jax.random.key(16)
    plain = sdekit.simulate(key, x0, TS, exact_forward, backward)
    tree = sdekit.simulate(key, x0, grid, on_entries(exact_forward), on_entries(backward))
    np.testing.assert_array_equal(np.asarray(tree.x), np.asarray(plain.x))
    np.testing.assert_array_equal(np.asarray(tree.log_ratio), np.asarray(plain.log_ratio))
    back = sdekit.simulate_backward(key, x0, grid, on_entries(exact_forward), on_entries(backward))
    ref = sdekit.simulate_backward(key, x0, TS, exact_forward, backward)
    np.testing.assert_array_equal(np.asarray(back.log_ratio), np.asarray(ref.log_ratio))
    with pytest.raises(ValueError, match=r"leading lengths \[12, 13\]"):
        sdekit.simulate(key, x0, {"time": TS, "short": TS[1:]}, exact_forward, backward)


def test_a_point_function_hands_each_kernel_its_states_value():
    """`point(t, x)` is evaluated at each state's own grid entry: the forward kernel of
    step k gets that of x_{k-1} (entry k-1), the backward kernel that of x_k (entry k)."""

    def point(t, x):
        return {"t": t, "x": x}

    # the means from the point's state and time (stds may not vary between particles)
    def forward(s, t, x, p):
        return exact_forward(s, p["t"] + 1, p["x"])[0], exact_forward(s, t, x)[1]

    def backward_(s, t, x, p):
        return backward(s, p["t"], p["x"])[0], backward(s, t, x)[1]

    x0, key = _start(jax.random.key(17), 16), jax.random.key(18)
    plain = sdekit.simulate(key, x0, TS, exact_forward, backward)
    pointed = sdekit.simulate(key, x0, TS, forward, backward_, point=point)
    np.testing.assert_array_equal(np.asarray(pointed.x), np.asarray(plain.x))
    np.testing.assert_array_equal(np.asarray(pointed.log_ratio), np.asarray(plain.log_ratio))
    ref = sdekit.simulate_backward(key, x0, TS, exact_forward, backward)
    back = sdekit.simulate_backward(key, x0, TS, forward, backward_, point=point)
    np.testing.assert_array_equal(np.asarray(back.x), np.asarray(ref.x))
    np.testing.assert_array_equal(np.asarray(back.log_ratio), np.asarray(ref.log_ratio))


def _leapfrog_kernels(h=0.4, friction=1.0):
    r"""Underdamped Langevin on states $(x, v)$ for the target $\mathcal N(M, V)$ in one
    dimension: an exact Ornstein–Uhlenbeck refresh of $v$ (the position a point mass) and a
    leapfrog move, with the reverse refresh as the backward kernel."""
    a = math.exp(-friction * h)
    std = jnp.array([0.0, math.sqrt(1 - a * a)])

    def refresh(s, t, z):
        return jnp.array([z[0], a * z[1]]), std

    def grad(x):
        return -(x - M) / V

    def move(s, t, y, p):
        x, v = y
        v = v + 0.5 * h * grad(x)
        x = x + h * v
        return jnp.array([x, v + 0.5 * h * grad(x)]), None

    def move_back(s, t, z, p):
        x, v = z
        v = v - 0.5 * h * grad(x)
        x = x - h * v
        return jnp.array([x, v - 0.5 * h * grad(x)])

    return refresh, move, move_back


def _log_extended(log_density):
    return lambda z: log_density(z[:1]) - 0.5 * z[1] ** 2 - 0.5 * math.log(2 * math.pi)


def test_moves_give_exact_weights_both_ways():
    """A splitting integrator (Gaussian refresh, then a leapfrog move) has unbiased weights
    from `simulate` ($\\mathbb E w = Z$) and from `simulate_backward` started at exact
    samples ($\\mathbb E[1/w] = 1/Z$), the position coordinate a point mass in both kernels."""
    refresh, move, move_back = _leapfrog_kernels()
    log_g = _log_extended(log_gamma)
    prior_std = 2.0
    log_start = _log_extended(lambda x: jnp.sum(-0.5 * (x / prior_std) ** 2 - math.log(prior_std)
                                                 - 0.5 * math.log(2 * math.pi)))
    n, k0, k1, k2 = 40_000, *jax.random.split(jax.random.key(30), 3)
    z0 = jax.random.normal(k0, (n, 2)) * jnp.array([prior_std, 1.0])
    path = sdekit.simulate(k1, z0, TS, refresh, refresh, move=move)
    lw = np.asarray(path.log_weights(log_g, log_start), np.float64)
    w = np.exp(lw - LOG_Z)
    assert abs(np.log(w.mean())) < 5 * w.std() / w.mean() / math.sqrt(n)
    assert w.std() > 0.05  # the leapfrog is inexact: the weights are not trivially 1

    z_end = jnp.stack([M + math.sqrt(V) * jax.random.normal(k2, (n,)),
                       jax.random.normal(jax.random.fold_in(k2, 1), (n,))], axis=1)
    back = sdekit.simulate_backward(k2, z_end, TS, refresh, refresh, move_back=move_back)
    inv = np.exp(LOG_Z - np.asarray(sdekit.backward_log_weights(back, log_g, log_start), np.float64))
    assert abs(np.log(inv.mean())) < 5 * inv.std() / inv.mean() / math.sqrt(n)

    y = jax.random.normal(k0, (5, 2))
    z = jax.vmap(move, in_axes=(None, None, 0, None))(0.0, 1.0, y, None)[0]
    undone = jax.vmap(move_back, in_axes=(None, None, 0, None))(0.0, 1.0, z, None)
    np.testing.assert_allclose(np.asarray(undone), np.asarray(y), atol=1e-5)


def test_path_log_ratio_rescores_simulated_paths():
    """`path_log_ratio` of the states `simulate` visited is the log-ratio it returned, with
    a point function, a pytree grid and a move; shifting one state changes it."""
    states = lambda s, t, x, x_new, inc: x_new  # noqa: E731
    x0 = _start(jax.random.key(40), 64)
    path = sdekit.simulate(jax.random.key(41), x0, TS, shifted_forward(0.2), backward, stats=states)
    xs = jnp.concatenate([x0[None], path.stats])
    again = sdekit.path_log_ratio(xs, TS, shifted_forward(0.2), backward)
    np.testing.assert_allclose(np.asarray(again), np.asarray(path.log_ratio), rtol=1e-5, atol=1e-5)
    moved = sdekit.path_log_ratio(xs.at[3].add(0.1), TS, shifted_forward(0.2), backward)
    assert np.all(np.abs(np.asarray(moved - again)) > 1e-4)

    refresh, move, move_back = _leapfrog_kernels()
    point = lambda t, z: {"t": t}  # noqa: E731
    on_point = lambda k: lambda s, t, z, p: k(s, t, z)  # noqa: E731
    z0 = jax.random.normal(jax.random.key(42), (64, 2))
    grid = {"time": TS}
    path = sdekit.simulate(jax.random.key(43), z0, grid, on_point(refresh), on_point(refresh),
                           point=point, move=lambda s, t, y, p: (move(s, t, y, p)[0], {"t": t}),
                           stats=states)
    zs = jnp.concatenate([z0[None], path.stats])
    again = sdekit.path_log_ratio(zs, grid, on_point(refresh), on_point(refresh), point=point,
                                  move_back=move_back)
    np.testing.assert_allclose(np.asarray(again), np.asarray(path.log_ratio), rtol=1e-4, atol=1e-4)
