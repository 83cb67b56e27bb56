import inspect
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

import sdekit
from sdekit import (
    AbstractController,
    AbstractPathSampler,
    AbstractProcess,
    AbstractTarget,
    AbstractTrainable,
    Path,
    Samples,
    Spec,
    TrainOptions,
    float_arrays_outside_targets,
    time_grid,
)


LOSSES = ("kl", "log-variance")
INTEGRATORS = ("euler", "exponential")



class ControlledSDE(AbstractPathSampler, AbstractTrainable):
    r"""A learned controlled SDE from the prior at `t_max` to the target, with exact weights.

    Generation runs the process's time backwards over the grid `ts`. Step $k$ is a Gaussian
    kernel $F_k(x_k \mid x_{k-1})$ for the generative drift
    $-f(t, x) + g(t)^2 (s_\text{ref}(t, x) + u_\theta(t, x))$, where
    $s_\text{ref}(t, x) = -x / \sigma_\text{ref}(t)^2$ is the score of the process started
    from its reference law (so $u_\theta = 0$ is the uncontrolled reference process) and
    $u_\theta = m_\theta / c^2$ with $m_\theta$ the controller's output and $c$ the
    `control_scale` (default: the reference law's largest std over the sampling window,
    `process.reference_std`, which is `sigma` for `vp` and for `pbm` with `T = 1`). The
    controller thus predicts the correction in the reference's units, as the DDS code does
    ($g^2 u_\theta = \beta m_\theta$ for vp), so that a wide reference does not multiply
    each change of the network by $\sigma^2$. `integrator="euler"` takes an
    Euler–Maruyama step; `"exponential"` (VP processes) integrates the linear part
    exactly, as DDS does:
    $x_k = a x_{k-1} + 2\sigma^2(1-a)u_\theta + \sigma\sqrt{1-a^2}\,\varepsilon$.

    The backward kernels $B_k$ are the process's Gaussian transitions, so the log-weight
    $\log w = \log\gamma(x_K) + \sum_k [\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})] - \log\nu(x_0)$
    is exact in discrete time for any grid. The paths and their weights come from
    `sdekit.simulate` (compensated summation of the per-step log-ratios). Arrays follow
    the default float type: float32, or float64 under `jax_enable_x64`.

    Losses: `"kl"`, the reverse KL $-\mathbb E[\log w]$ with reparameterised trajectories
    (gradients flow through the target); `"log-variance"`, $\mathrm{Var}[\log w]$ on
    trajectories detached from the parameters. The log-variance loss is zero exactly at the
    optimal control whatever law the trajectories are drawn from, so they may explore:
    `exploration` $= e \ge 0$ draws the training trajectories with the forward kernels'
    noise std multiplied by $1 + e$ (the weights still use the kernels $F_k$ themselves;
    sampling is unaffected). Default 0, on-policy. With $e > 0$ the training statistics
    `elbo` and `log_Z` are means over those exploring trajectories, not bounds on $\log Z$.

    Training grid: `train_steps` (if given) sets the grid the loss simulates on, `steps`
    the one `sample` uses. The controller is a function of continuous time, so it can be
    trained on a coarser grid (cheaper steps, more of them) and sampled on a finer one; the
    weights are exact for the grid sampled on, whatever the controller.

    Scale: `remat=True` rematerialises the trajectory in the backward pass (memory growing
    like $\sqrt K$ instead of $K$, for two more forward passes: 1.4-1.7x the step time);
    gradients are the same. `devices=m` shards the particle axis over a mesh of the first
    `m` of `jax.devices()` (all hosts' devices under `jax.distributed`); `None`, the
    default, shards over every device of every process in a multi-process run and not at
    all in one process (`sdekit.particle_sharding`). The random numbers do not depend on
    the sharding, so samples and weights are those of the single-device run.

    Construction takes the parts as `sdekit.resolve_part` does (a registered name, a
    `{"name": ..., **options}` dict, or an object), so `ControlledSDE(target="funnel")`
    works alone; the registered `pis`, `dds` and `dis` differ in their default process and
    integrator.
    """

    process: AbstractProcess
    controller: AbstractController
    target: AbstractTarget
    ts: Float[Array, " K+1"]
    train_options: TrainOptions
    integrator: str = eqx.field(static=True)
    loss_name: str = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True)
    devices: int | None = eqx.field(static=True)
    exploration: float = eqx.field(static=True)
    control_scale: float = eqx.field(static=True)
    train_ts: Float[Array, " J+1"] | None

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        controller: Spec = "pis-grad",
        integrator: str = "euler",
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
    ):
        _check_training(loss, exploration, batch, remat, devices, train_steps)
        self.target = sdekit.resolve_part("target", target)
        self.process = sdekit.resolve_part("process", process)
        self.controller = sdekit.resolve_part(
            "controller", controller, target=self.target, process=self.process
        )
        _check_integrator(integrator, self.process)
        self.ts = time_grid(self.process, steps, spacing)
        self.train_ts = None if train_steps is None else time_grid(self.process, train_steps, spacing)
        self.train_options = TrainOptions(
            steps=train_iters, learning_rate=learning_rate, grad_clip=grad_clip or None
        )
        self.integrator, self.loss_name, self.batch = integrator, loss, batch
        self.remat, self.devices, self.exploration = remat, devices, float(exploration)
        self.control_scale = _control_scale(self.process, control_scale)

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

    def backward_kernel(self, t_a, t_b, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Mean and std of the backward kernel $B_k$: the process's transition from `t_b` to `t_a`."""
        coef, std = self.process.transition(t_b, t_a)
        return coef * x, std

    def simulate(
        self, key: PRNGKeyArray, n: int, *, detach: bool = False, noise: float = 1.0,
        ts: Array | None = None, stats: sdekit.StepStats | None = None,
    ) -> Path:
        """`n` paths from the prior over the grid `ts` (default `self.ts`) with the kernels'
        noise std times `noise` (see `sdekit.simulate`); `path.log_weights` are exact
        importance weights when `noise` is 1."""
        ts = self.ts if ts is None else ts
        k_prior, k_path = jax.random.split(key)
        x0 = self.process.prior_sample(k_prior, (n, self.target.dim))
        return sdekit.simulate(
            k_path, x0, ts, self.kernel, self.backward_kernel, noise=noise, detach=detach,
            remat=self.remat, stats=stats, sharding=sdekit.particle_sharding(n, self.devices),
        )

    def _log_weights(self, path: Path) -> Float[Array, " n"]:
        return path.log_weights(self.target.log_prob, self.process.prior_log_prob)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        path = self.simulate(key, n)
        return Samples(path.x, self._log_weights(path))

    @eqx.filter_jit
    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of trajectories started at target samples `x` and run backwards
        through the kernels $B_k$; their mean is the EUBO, an upper bound on $\log Z$."""
        path = sdekit.simulate_backward(
            key, x, self.ts, self.kernel, self.backward_kernel, remat=self.remat,
            sharding=sdekit.particle_sharding(x.shape[0], self.devices),
        )
        return sdekit.backward_log_weights(path, self.target.log_prob, self.process.prior_log_prob)

    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        # exploration is 0 for "kl" (checked at construction): on-policy, reparameterised
        detach = self.loss_name == "log-variance"
        path = self.simulate(key, self.batch, detach=detach, noise=1 + self.exploration, ts=self.train_ts)
        log_w = self._log_weights(path)
        elbo = jnp.mean(log_w)
        loss = -elbo if self.loss_name == "kl" else jnp.var(log_w)
        log_Z = jax.nn.logsumexp(log_w) - jnp.log(self.batch)
        return loss, {"elbo": jax.lax.stop_gradient(elbo), "log_Z": jax.lax.stop_gradient(log_Z)}


def _check_training(loss, exploration, batch, remat, devices, train_steps) -> None:
    """`ValueError` naming the first bad training option."""
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
    if devices is not None:
        sdekit.particle_sharding(batch, devices)  # raises unless the batch splits over them
    if train_steps is not None and not (
        isinstance(train_steps, int) and not isinstance(train_steps, bool) and train_steps >= 1
    ):
        raise ValueError(f"train_steps must be None or an integer >= 1, got {train_steps!r}")


def _check_integrator(integrator: str, process: AbstractProcess) -> None:
    """A known integrator; the exponential one needs a VP-type process (a stationary reference law)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    if integrator != "exponential":
        return
    t = jnp.linspace(process.t_min, process.t_max, 5)
    ref = jax.vmap(process.reference_std)(t)
    a, std = process.transition(t[1], t[3])
    ok = jnp.allclose(ref, ref[0], rtol=1e-5) and jnp.allclose(std**2, ref[0] ** 2 * (1 - a**2), rtol=1e-4)
    if not ok:
        raise ValueError(
            f"the exponential integrator needs a process with a stationary reference law "
            f"(such as vp); {type(process).__name__} has none. Use integrator='euler'."
        )


def _control_scale(process: AbstractProcess, value: float | None) -> float:
    """`value`, or when `None` the reference law's largest std over the sampling window
    (at `t_min` or `t_max`): `sigma` for `vp`, $\\sigma\\sqrt{T - t_\\min}$ for `pbm`."""
    if value is None:
        ends = (process.reference_std(process.t_min), process.reference_std(process.t_max))
        value = float(max(ends))
    ok = not isinstance(value, (bool, str)) and np.ndim(value) == 0
    if not (ok and math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"control_scale must be a positive number, got {value!r}")
    return float(value)


_OPTIONS = inspect.signature(ControlledSDE).parameters


def _factory(name: str, default_process: str, integrator: str, summary: str):
    """A sampler factory: `ControlledSDE` with its own default process and integrator; its
    signature (that of `ControlledSDE` without `integrator`) is what `sdekit show` prints."""

    def factory(target: Spec, process: Spec = default_process, **options: Any) -> ControlledSDE:
        return ControlledSDE(target, process, integrator=integrator, **options)

    params = [p for k, p in _OPTIONS.items() if k not in ("target", "process", "integrator")]
    head = [_OPTIONS["target"], _OPTIONS["process"].replace(default=default_process)]
    factory.__signature__ = inspect.Signature([*head, *params], return_annotation=ControlledSDE)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""{summary}

    Training (`sdekit.train`): `loss` (`"kl"` or `"log-variance"`), `batch` trajectories per
    step, `train_iters` Adam steps at peak `learning_rate` (cosine decay), global gradient
    norm clipped to `grad_clip` (0: none). `steps` is the number of time steps $K$ and
    `spacing` the time grid (`"uniform"`, `"cosine"`, …). `remat=True`: training
    memory growing like sqrt(K), not K (checkpointed steps, same gradients). `devices`: shard
    the particles over that many devices (`None`: over every process's devices in a
    multi-process run, else none; same results either way).
    `exploration` (log-variance only): training trajectories' noise std times 1 + exploration.
    `control_scale` c: the controller's output is $c^2 u$ (`None`: the reference law's
    largest std: `sigma` for `vp`, and for `pbm` with `T = 1`). `train_steps`: the number of time steps of
    the grid training simulates on (`None`: `steps`); sampling always uses `steps`."""
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
