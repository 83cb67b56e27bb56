from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
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
    gaussian_log_prob,
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
    $u_\theta$ is the controller. `integrator="euler"` takes an Euler–Maruyama step;
    `"exponential"` (VP processes) integrates the linear part exactly, as DDS does:
    $x_k = a x_{k-1} + 2\sigma^2(1-a)u_\theta + \sigma\sqrt{1-a^2}\,\varepsilon$.

    The backward kernels $B_k$ are the process's Gaussian transitions, so the log-weight
    $\log w = \log\gamma(x_K) + \sum_k [\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})] - \log\nu(x_0)$
    is exact in discrete time for any grid; it is accumulated step by step as the
    difference of the two kernel log-densities.

    Losses: `"kl"`, the reverse KL $-\mathbb E[\log w]$ with reparameterised trajectories
    (gradients flow through the target); `"log-variance"`, $\mathrm{Var}[\log w]$ on
    trajectories detached from the parameters.
    """

    process: AbstractProcess
    controller: AbstractController
    target: AbstractTarget
    ts: Float[Array, " K+1"]
    train_options: TrainOptions
    integrator: str = eqx.field(static=True)
    loss_name: str = eqx.field(static=True)
    batch: int = eqx.field(static=True)

    def trainable(self):
        """Only the controller is trained (never the target it may hold)."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda s: s.controller, spec, float_arrays_outside_targets(self.controller))

    def kernel(self, t_a, t_b, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Mean and std of the forward kernel from process time `t_a` to `t_b < t_a`."""
        u = self.controller(t_a, x)
        if self.integrator == "exponential":
            a, std = self.process.transition(t_b, t_a)
            var = self.process.reference_std(t_a) ** 2
            return a * x + 2 * var * (1 - a) * u, std
        h = t_a - t_b
        g = self.process.diffusion(t_a)
        s_ref = -x / self.process.reference_std(t_a) ** 2
        return x + h * (-self.process.drift(t_a, x) + g**2 * (s_ref + u)), g * jnp.sqrt(h)

    def _simulate(self, key: PRNGKeyArray, n: int, detach: bool) -> Samples:
        kernel = jax.vmap(self.kernel, in_axes=(None, None, 0), out_axes=(0, None))
        k_prior, k_path = jax.random.split(key)
        x0 = self.process.prior_sample(k_prior, (n, self.target.dim))
        log_w0 = -jax.vmap(self.process.prior_log_prob)(x0)

        def step(carry, inputs):
            x, log_w = carry
            t_a, t_b, k = inputs
            mean, std = kernel(t_a, t_b, x)
            x_new = mean + std * jax.random.normal(k, x.shape)
            if detach:
                x_new = jax.lax.stop_gradient(x_new)
            coef, std_b = self.process.transition(t_b, t_a)
            log_w += gaussian_log_prob(x, coef * x_new, std_b) - gaussian_log_prob(x_new, mean, std)
            return (x_new, log_w), None

        keys = jax.random.split(k_path, self.ts.shape[0] - 1)
        (x, log_w), _ = jax.lax.scan(step, (x0, log_w0), (self.ts[:-1], self.ts[1:], keys))
        return Samples(x, log_w + jax.vmap(self.target.log_prob)(x))

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
            x_prev = coef * x + std_b * jax.random.normal(k, x.shape)
            mean, std = kernel(t_a, t_b, x_prev)
            log_w += gaussian_log_prob(x_prev, coef * x, std_b) - gaussian_log_prob(x, mean, std)
            return (x_prev, log_w), None

        keys = jax.random.split(key, self.ts.shape[0] - 1)
        log_w0 = jax.vmap(self.target.log_prob)(x)
        inputs = (self.ts[:-1], self.ts[1:], keys)
        (x0, log_w), _ = jax.lax.scan(step, (x, log_w0), inputs, reverse=True)
        return log_w - jax.vmap(self.process.prior_log_prob)(x0)

    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        log_w = self._simulate(key, self.batch, detach=self.loss_name == "log-variance").log_weights
        elbo = jnp.mean(log_w)
        loss = -elbo if self.loss_name == "kl" else jnp.var(log_w)
        log_Z = jax.nn.logsumexp(log_w) - jnp.log(self.batch)
        return loss, {"elbo": jax.lax.stop_gradient(elbo), "log_Z": jax.lax.stop_gradient(log_Z)}


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
) -> ControlledSDE:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not (isinstance(batch, int) and batch >= 2):
        raise ValueError(f"batch must be an integer >= 2, got {batch!r}")
    if integrator == "exponential":
        _check_stationary(process)
    options = TrainOptions(
        steps=train_iters, learning_rate=learning_rate, grad_clip=grad_clip or None
    )
    ts = time_grid(process, steps, spacing)
    return ControlledSDE(process, controller, target, ts, options, integrator, loss, batch)


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
    ) -> ControlledSDE:
        return _controlled(
            target, process, controller, integrator=integrator, steps=steps, spacing=spacing,
            loss=loss, batch=batch, train_iters=train_iters, learning_rate=learning_rate,
            grad_clip=grad_clip,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""{summary}

    Training (`sdekit.train`): `loss` (`"kl"` or `"log-variance"`), `batch` trajectories per
    step, `train_iters` Adam steps at peak `learning_rate` (cosine decay), global gradient
    norm clipped to `grad_clip` (0: none). `steps` is the number of time steps $K$ and
    `spacing` the time grid (`"uniform"`, `"cosine"`, …)."""
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
