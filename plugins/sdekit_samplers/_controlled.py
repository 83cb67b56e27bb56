import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from sdekit import (
    AbstractController,
    AbstractProcess,
    AbstractSampler,
    AbstractTarget,
    AbstractTrainable,
    Samples,
    TrainOptions,
    float_arrays_outside_targets,
    time_grid,
)

LOSSES = ("kl", "log-variance")
INTEGRATORS = ("euler", "exponential")


class ControlledSDE(AbstractSampler, AbstractTrainable):
    r"""A learned controlled SDE from the prior at `t_max` to the target, with exact weights.

    Generation runs the process's time backwards over the grid `ts`. Step $k$ is a Gaussian
    kernel $F_k(x_k \mid x_{k-1})$ for the generative drift
    $-f(t, x) + g(t)^2 (s_\text{ref}(t, x) + u_\theta(t, x))$, where
    $s_\text{ref}(t, x) = -x / \sigma_\text{ref}(t)^2$ is the score of the process started
    from its reference law (so $u_\theta = 0$ is the uncontrolled reference process) and
    $u_\theta = m_\theta / c^2$ with $m_\theta$ the controller's output and $c$ the
    `control_scale` (default: the process's `sigma`). The controller thus predicts the
    correction in the reference's units, as the DDS code does ($g^2 u_\theta = \beta m_\theta$
    for vp), and a wide reference does not multiply each change of the network by
    $\sigma^2$ (with $c = 1$, `dds` and `dis` blow up on gmm40 at σ = 20). `integrator="euler"`
    takes an Euler–Maruyama step; `"exponential"` (VP processes) integrates the linear part
    exactly, as DDS does:
    $x_k = a x_{k-1} + 2\sigma^2(1-a)u_\theta + \sigma\sqrt{1-a^2}\,\varepsilon$.

    The backward kernels $B_k$ are the process's Gaussian transitions, so the log-weight
    $\log w = \log\gamma(x_K) + \sum_k [\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})] - \log\nu(x_0)$
    is exact in discrete time for any grid. The per-step differences are formed directly
    ($\tfrac12(|z_F|^2 - |z_B|^2) + d\log(\sigma_F/\sigma_B)$, the $2\pi$ terms cancelled)
    and summed from zero with compensated (Kahan) summation, so rounding does not grow
    with $K$; the end terms $\log\gamma(x_K) - \log\nu(x_0)$ are added last. Arrays
    follow the default float type: float32, or float64 under `jax_enable_x64`.

    Losses: `"kl"`, the reverse KL $-\mathbb E[\log w]$ with reparameterised trajectories
    (gradients flow through the target); `"log-variance"`, $\mathrm{Var}[\log w]$ on
    trajectories detached from the parameters. The log-variance loss is zero exactly at the
    optimal control whatever law the trajectories are drawn from, so they may explore:
    `exploration` $= e \ge 0$ draws the training trajectories with the forward kernels'
    noise std multiplied by $1 + e$ (the weights still use the kernels $F_k$ themselves;
    sampling is unaffected). Default 0, on-policy. With $e > 0$ the training statistics
    `elbo` and `log_Z` are means over those exploring trajectories, not bounds on $\log Z$.

    Training grid: `train_ts` (if given) is the grid the loss simulates on, `ts` the one
    `sample` uses. The controller is a function of continuous time, so it can be trained on
    a coarser grid (cheaper steps, more of them) and sampled on a finer one; the weights
    are exact for the grid sampled on, whatever the controller.

    Scale: `remat=True` rematerialises the trajectory in the backward pass (`jax.checkpoint`
    of each step, nested in segments of about $\sqrt K$ steps), so training memory grows
    like $\sqrt K$ instead of $K$, for two more forward passes (1.4-1.7x the step time);
    gradients are the same. `devices=m` shards the particle axis over a mesh of the first `m` of
    `jax.devices()` (all hosts' devices under `jax.distributed`); the random numbers do not
    depend on the sharding, so samples and weights are those of the single-device run.
    """

    process: AbstractProcess
    controller: AbstractController
    target: AbstractTarget
    ts: Float[Array, " K+1"]
    train_options: TrainOptions
    integrator: str = eqx.field(static=True)
    loss_name: str = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True, default=False)
    devices: int | None = eqx.field(static=True, default=None)
    exploration: float = eqx.field(static=True, default=0.0)
    control_scale: float = eqx.field(static=True, default=1.0)
    train_ts: Float[Array, " J+1"] | None = None

    def trainable(self):
        """Only the controller is trained (never the target it may hold)."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda s: s.controller, spec, float_arrays_outside_targets(self.controller))

    def kernel(self, t_a, t_b, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Mean and std of the forward kernel from process time `t_a` to `t_b < t_a`."""
        u = self.controller(t_a, x) / self.control_scale**2
        if self.integrator == "exponential":
            a, std = self.process.transition(t_b, t_a)
            var = self.process.reference_std(t_a) ** 2
            return a * x + 2 * var * (1 - a) * u, std
        h = t_a - t_b
        g = self.process.diffusion(t_a)
        # -f + g^2 s_ref is linear in x (Gaussian transitions): one coefficient per step, so
        # the cancellation in it (exact for pbm, where both terms blow up near T) is not
        # redone, and rounded differently, for each particle
        ones = jnp.ones(x.shape, x.dtype)
        linear = -self.process.drift(t_a, ones) - g**2 / self.process.reference_std(t_a) ** 2
        return x + h * (linear * x + g**2 * u), g * jnp.sqrt(h)

    def _shard(self, x: Array) -> Array:
        """`x` with its leading (particle) axis sharded over `devices` (if set)."""
        if self.devices is None:
            return x
        if x.shape[0] % self.devices:
            raise ValueError(
                f"the number of particles ({x.shape[0]}) must be a multiple of devices={self.devices}"
            )
        return jax.lax.with_sharding_constraint(x, particle_sharding(self.devices))

    def _scan(self, step, carry, xs):
        """`lax.scan(step, carry, xs)` without outputs; with `remat`, rematerialised."""
        if not self.remat:
            return jax.lax.scan(step, carry, xs)[0]
        return remat_scan(step, carry, xs)

    def _simulate(
        self, key: PRNGKeyArray, n: int, detach: bool, noise: float = 1.0, ts: Array | None = None
    ) -> Samples:
        """Trajectories from the prior over the grid `ts` (default `self.ts`) with the kernels'
        noise std times `noise`, and their log-weights under the kernels $F_k$ (exact
        importance weights when `noise` is 1)."""
        ts = self.ts if ts is None else ts
        kernel = jax.vmap(self.kernel, in_axes=(None, None, 0), out_axes=(0, None))
        k_prior, k_path = jax.random.split(key)
        x0 = self._shard(self.process.prior_sample(k_prior, (n, self.target.dim)))

        def step(carry, inputs):
            x, log_w = carry
            t_a, t_b, k = inputs
            mean, std = kernel(t_a, t_b, x)
            x_new = mean + (noise * std) * jax.random.normal(k, x.shape, x.dtype)
            if detach:
                x_new = jax.lax.stop_gradient(x_new)
            coef, std_b = self.process.transition(t_b, t_a)
            return (x_new, kahan_add(log_w, _log_ratio(x, coef * x_new, std_b, x_new, mean, std))), None

        keys = jax.random.split(k_path, ts.shape[0] - 1)
        zero = self._shard(jnp.zeros(n, x0.dtype))
        x, (log_w, _) = self._scan(step, (x0, (zero, zero)), (ts[:-1], ts[1:], keys))
        ends = jax.vmap(self.target.log_prob)(x) - jax.vmap(self.process.prior_log_prob)(x0)
        return Samples(x, log_w + ends)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        return self._simulate(key, n, detach=False)

    @eqx.filter_jit
    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of trajectories started at target samples `x` and run backwards
        through the kernels $B_k$; their mean is the EUBO, an upper bound on $\log Z$."""
        kernel = jax.vmap(self.kernel, in_axes=(None, None, 0), out_axes=(0, None))

        def step(carry, inputs):
            x, log_w = carry
            t_a, t_b, k = inputs
            coef, std_b = self.process.transition(t_b, t_a)
            x_prev = coef * x + std_b * jax.random.normal(k, x.shape, x.dtype)
            mean, std = kernel(t_a, t_b, x_prev)
            return (x_prev, kahan_add(log_w, _log_ratio(x_prev, coef * x, std_b, x, mean, std))), None

        x = self._shard(x)
        keys = jax.random.split(key, self.ts.shape[0] - 1)
        zero = self._shard(jnp.zeros(x.shape[0], x.dtype))
        inputs = (self.ts[:-1], self.ts[1:], keys)
        x0, (log_w, _) = jax.lax.scan(step, (x, (zero, zero)), inputs, reverse=True)[0]
        return log_w + jax.vmap(self.target.log_prob)(x) - jax.vmap(self.process.prior_log_prob)(x0)

    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        # exploration is 0 for "kl" (checked at composition): on-policy, reparameterised
        detach = self.loss_name == "log-variance"
        noise = 1 + self.exploration
        log_w = self._simulate(key, self.batch, detach, noise, self.train_ts).log_weights
        elbo = jnp.mean(log_w)
        loss = -elbo if self.loss_name == "kl" else jnp.var(log_w)
        log_Z = jax.nn.logsumexp(log_w) - jnp.log(self.batch)
        return loss, {"elbo": jax.lax.stop_gradient(elbo), "log_Z": jax.lax.stop_gradient(log_Z)}


def _log_ratio(x, mean_b, std_b, y, mean_f, std_f) -> Float[Array, "*n"]:
    r"""$\log \mathcal N(x; m_B, \sigma_B^2) - \log \mathcal N(y; m_F, \sigma_F^2)$ formed as one
    difference (the $2\pi$ terms cancel exactly, the normalisers enter as one log ratio)."""
    z_b, z_f = (x - mean_b) / std_b, (y - mean_f) / std_f
    d = x.shape[-1]
    return 0.5 * (jnp.sum(z_f**2, -1) - jnp.sum(z_b**2, -1)) + d * jnp.log(std_f / std_b)


def kahan_add(total: tuple[Array, Array], value: Array) -> tuple[Array, Array]:
    """Compensated (Kahan) summation: add `value` to `total = (sum, compensation)`."""
    s, c = total
    y = value - c
    t = s + y
    return t, (t - s) - y


def remat_scan(step, carry, xs):
    r"""`lax.scan(step, carry, xs)[0]` with memory $O(\sqrt K)$ in the length $K$ for gradients.

    The $K$ steps run as an outer scan over segments of $c$ steps ($c$ the divisor of $K$
    nearest $\sqrt K$ from below); each segment and each step is a `jax.checkpoint`, so the
    backward pass stores $K/c$ segment-start carries, recomputes one segment's $c$ carries at
    a time and one step's intermediates at a time.
    """
    K = jax.tree.leaves(xs)[0].shape[0]
    c = max(i for i in range(1, math.isqrt(K) + 1) if K % i == 0)
    segments = jax.tree.map(lambda a: a.reshape(K // c, c, *a.shape[1:]), xs)
    inner = jax.checkpoint(step, prevent_cse=False)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def segment(carry, seg):
        return jax.lax.scan(inner, carry, seg)[0], None

    return jax.lax.scan(segment, carry, segments)[0]


def particle_sharding(devices: int) -> jax.sharding.NamedSharding:
    """Shards an array's leading axis over a 1-D mesh `("particles",)` of the first
    `devices` of `jax.devices()`, replicating the other axes."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:devices]), ("particles",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("particles"))


def _check_devices(devices: int | None, batch: int) -> None:
    if devices is None:
        return
    available = jax.device_count()
    if isinstance(devices, bool) or not (isinstance(devices, int) and 1 <= devices <= available):
        raise ValueError(
            f"devices must be None or an integer in [1, {available}] (jax.device_count()), "
            f"got {devices!r}"
        )
    if batch % devices:
        raise ValueError(f"batch ({batch}) must be a multiple of devices={devices}")


def _check_stationary(process: AbstractProcess) -> None:
    """The exponential integrator needs a VP-type process: stationary reference law."""
    t = jnp.linspace(process.t_min, process.t_max, 5)
    ref = jax.vmap(process.reference_std)(t)
    a, std = process.transition(t[1], t[3])
    ok = jnp.allclose(ref, ref[0], rtol=1e-5) and jnp.allclose(std**2, ref[0] ** 2 * (1 - a**2), rtol=1e-4)
    if not ok:
        raise ValueError(
            f"the exponential integrator needs a process with a stationary reference law "
            f"(such as vp); {type(process).__name__} has none. Use integrator='euler'."
        )


def _controlled(
    target: AbstractTarget,
    process: AbstractProcess,
    controller: AbstractController,
    *,
    integrator: str,
    steps: int,
    spacing: str,
    loss: str,
    batch: int,
    train_iters: int,
    learning_rate: float,
    grad_clip: float | None,
    remat: bool = False,
    devices: int | None = None,
    exploration: float = 0.0,
    control_scale: float | None = None,
    train_steps: int | None = None,
) -> ControlledSDE:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not (isinstance(exploration, (int, float)) and exploration >= 0):
        raise ValueError(f"exploration must be a number >= 0, got {exploration!r}")
    if exploration and loss != "log-variance":
        raise ValueError(
            f"exploration={exploration} needs loss='log-variance' (the 'kl' loss is on-policy)"
        )
    if not (isinstance(batch, int) and batch >= 2):
        raise ValueError(f"batch must be an integer >= 2, got {batch!r}")
    if not isinstance(remat, bool):
        raise ValueError(f"remat must be True or False, got {remat!r}")
    _check_devices(devices, batch)
    control_scale = _control_scale(process, control_scale)
    if train_steps is not None and not (
        isinstance(train_steps, int) and not isinstance(train_steps, bool) and train_steps >= 1
    ):
        raise ValueError(f"train_steps must be None or an integer >= 1, got {train_steps!r}")
    if integrator == "exponential":
        _check_stationary(process)
    options = TrainOptions(
        steps=train_iters, learning_rate=learning_rate, grad_clip=grad_clip or None
    )
    ts = time_grid(process, steps, spacing)
    train_ts = None if train_steps is None else time_grid(process, train_steps, spacing)
    return ControlledSDE(
        process, controller, target, ts, options, integrator, loss, batch, remat, devices,
        float(exploration), control_scale, train_ts,
    )


def _control_scale(process: AbstractProcess, value: float | None) -> float:
    """`value`, or the process's `sigma` when `None` (1 for a process without one)."""
    if value is None:
        value = getattr(process, "sigma", 1.0)
    ok = not isinstance(value, (bool, str)) and np.ndim(value) == 0
    if not (ok and math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"control_scale must be a positive number, got {value!r}")
    return float(value)


def _factory(name: str, default_process: str, integrator: str, summary: str):
    """A sampler factory; its signature is what `sdekit show sampler NAME` prints."""

    def factory(
        target: AbstractTarget,
        process: Any = default_process,
        controller: Any = "pis-grad",
        steps: int = 128,
        spacing: str = "uniform",
        loss: str = "kl",
        batch: int = 256,
        train_iters: int = 2000,
        learning_rate: float = 5e-3,
        grad_clip: float = 1.0,
        remat: bool = False,
        devices: int | None = None,
        exploration: float = 0.0,
        control_scale: float | None = None,
        train_steps: int | None = None,
    ) -> ControlledSDE:
        return _controlled(
            target, process, controller, integrator=integrator, steps=steps, spacing=spacing,
            loss=loss, batch=batch, train_iters=train_iters, learning_rate=learning_rate,
            grad_clip=grad_clip, remat=remat, devices=devices, exploration=exploration,
            control_scale=control_scale, train_steps=train_steps,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""{summary}

    Training (`sdekit.train`): `loss` (`"kl"` or `"log-variance"`), `batch` trajectories per
    step, `train_iters` Adam steps at peak `learning_rate` (cosine decay), global gradient
    norm clipped to `grad_clip` (0: none). `steps` is the number of time steps $K$ and
    `spacing` the time grid (`"uniform"`, `"cosine"`, …). `remat=True`: training
    memory growing like sqrt(K), not K (checkpointed steps, same gradients). `devices`: shard
    the particles over that many devices (`None`: no sharding; same results either way).
    `exploration` (log-variance only): training trajectories' noise std times 1 + exploration.
    `control_scale` c: the controller's output is $c^2 u$ (`None`: the process's `sigma`).
    `train_steps`: the number of time steps of the grid training simulates on (`None`:
    `steps`); sampling always uses `steps`."""
    return factory


pis = _factory(
    "pis", "pbm", "euler",
    "Path integral sampler: the pinned Brownian motion reference, Euler–Maruyama steps.",
)
dds = _factory(
    "dds", "vp", "exponential",
    "Denoising diffusion sampler: VP (Ornstein–Uhlenbeck) reference, exponential integrator.",
)
dis = _factory(
    "dis", "vp", "euler",
    "Time-reversed diffusion sampler: the reverse of a VP diffusion, Euler–Maruyama steps.",
)
