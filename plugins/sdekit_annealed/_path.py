r"""The annealed path: densities $\pi_k$ from a Gaussian prior to the target, and the
Langevin kernels between them."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from sdekit import AbstractController, AbstractTarget, gaussian_log_prob


def _inverse_softplus(y: Array) -> Array:
    return y + jnp.log(-jnp.expm1(-y))


def cosine_decay(K: int, floor: float = 0.01) -> Float[Array, " K"]:
    r"""$c_k = (1 - f)\cos^2(\tfrac{\pi}{2}\tfrac{k - 1}{K - 1}) + f$, $k = 1..K$: from 1
    down to the floor $f$ (the step-size shape of the published annealed samplers)."""
    u = jnp.arange(K) / max(K - 1, 1)
    return (1 - floor) * jnp.cos(0.5 * jnp.pi * u) ** 2 + floor


class AnnealedPath(eqx.Module):
    r"""The geometric path $\pi_\beta \propto \nu^{1-\beta}\gamma^{\beta}$ and its schedule.

    $\nu = \mathcal N(\mu, \mathrm{diag}(s)^2)$ is the prior, $\gamma$ the target. Step $k$
    ($k = 1..K$) has an annealing level $\beta_k$ and a step size $\varepsilon_k$:

    - $\beta_0 = 0$, $\beta_k = \sum_{j \le k} \mathrm{softplus}(\theta_j) / \sum_j
      \mathrm{softplus}(\theta_j)$, monotone with $\beta_K = 1$ for any $\theta$ (uniform at
      $\theta = 1$);
    - $\varepsilon_k = \mathrm{softplus}(\eta_k)$, one per step.

    `score_clip` $c$ (default `None`, off) clips each component of $\nabla\log\gamma$ to
    $[-c, c]$ in the kernels' drift only: the weights stay exact, since the backward
    kernels use the same drift. Targets with extreme gradients far from their mass (the
    funnel's neck at large negative $x_0$) may need it; none of the benchmarks does.
    """

    target: AbstractTarget
    mean: Float[Array, " d"]
    log_scale: Float[Array, " d"]
    schedule: Float[Array, " K"]
    raw_step: Float[Array, " K"]
    score_clip: float | None = eqx.field(static=True)

    def __init__(self, target: AbstractTarget, steps: int, prior_scale: float,
                 step_size: float, score_clip: float | None = None):
        d = target.dim
        self.target = target
        self.mean = jnp.zeros(d)
        self.log_scale = jnp.full(d, math.log(prior_scale))
        self.schedule = jnp.ones(steps)
        self.raw_step = _inverse_softplus(step_size * cosine_decay(steps))
        self.score_clip = score_clip

    @property
    def steps(self) -> int:
        return self.schedule.shape[0]

    def betas(self) -> Float[Array, " K+1"]:
        increments = jax.nn.softplus(self.schedule)
        return jnp.concatenate([jnp.zeros(1), jnp.cumsum(increments) / jnp.sum(increments)])

    def step_sizes(self) -> Float[Array, " K"]:
        return jax.nn.softplus(self.raw_step)

    def grid(self) -> dict[str, Array]:
        """The per-step grid of `sdekit.simulate`: `beta`, `step` (entry $k$ is
        $\\varepsilon_k$; entry 0 is unused) and `time` $= k / K$, the controller's time."""
        K = self.steps
        step = jnp.concatenate([self.step_sizes()[:1], self.step_sizes()])
        return {"beta": self.betas(), "step": step, "time": jnp.arange(K + 1) / K}

    def prior_sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """Reparameterised draws from the prior."""
        z = jax.random.normal(key, (n, self.mean.shape[0]))
        return self.mean + jnp.exp(self.log_scale) * z

    def prior_log_prob(self, x: Float[Array, " d"]) -> Scalar:
        return gaussian_log_prob(x, self.mean, jnp.exp(self.log_scale))

    def log_prob(self, beta: Scalar, x: Float[Array, " d"]) -> Scalar:
        r"""$\log\pi_\beta(x) = (1 - \beta)\log\nu(x) + \beta\log\gamma(x)$ (unnormalised)."""
        return (1 - beta) * self.prior_log_prob(x) + beta * self.target.log_prob(x)

    def score(self, beta: Scalar, x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$\nabla\log\pi_\beta(x)$, with $\nabla\log\gamma$ clipped to `score_clip`."""
        grad = jax.grad(self.target.log_prob)(x)
        if self.score_clip is not None:
            grad = jnp.clip(grad, -self.score_clip, self.score_clip)
        prior = -(x - self.mean) * jnp.exp(-2 * self.log_scale)
        return (1 - beta) * prior + beta * grad


def langevin_kernels(path: AnnealedPath, control: AbstractController):
    r"""The controlled Langevin kernels of step $k$, both at level $\beta_k$:

    $F_k(x_k \mid x_{k-1}) = \mathcal N(x_{k-1} + \varepsilon_k[\nabla\log\pi_k + u](x_{k-1}), 2\varepsilon_k I)$,
    $B_k(x_{k-1} \mid x_k) = \mathcal N(x_k + \varepsilon_k[\nabla\log\pi_k - u](x_k), 2\varepsilon_k I)$,

    with $u = u(k/K, \cdot)$ the control. With $u = 0$ both are unadjusted Langevin steps
    for $\pi_k$ (annealed importance sampling with ULA moves); the learned $u$ makes the
    forward and backward path laws meet. Kernels for `sdekit.simulate` on `path.grid()`.
    """

    def forward(s, t, x):
        eps = t["step"]
        return x + eps * (path.score(t["beta"], x) + control(t["time"], x)), jnp.sqrt(2 * eps)

    def backward(s, t, x):
        eps = t["step"]
        return x + eps * (path.score(t["beta"], x) - control(t["time"], x)), jnp.sqrt(2 * eps)

    return forward, backward
