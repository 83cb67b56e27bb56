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


class Standardised(AbstractTarget):
    r"""`target` in the coordinates $y = (x - \mu)/s$ of a fitted Gaussian
    $\mathcal N(\mu, \mathrm{diag}(s)^2)$: $\log\gamma_y(y) = \log\gamma(\mu + s\,y) +
    \sum_i \log s_i$, the same normalising constant. A sampler run in these coordinates
    sees a target of scale about 1 whatever the model's units."""

    target: AbstractTarget
    mean: Float[Array, " d"]
    scale: Float[Array, " d"]

    @property
    def dim(self) -> int:
        return self.target.dim

    def log_prob(self, y: Float[Array, " d"]) -> Scalar:
        return self.target.log_prob(self.to_target(y)) + jnp.sum(jnp.log(self.scale))

    @property
    def log_Z(self) -> float | None:
        return self.target.log_Z

    def to_target(self, y: Float[Array, "... d"]) -> Float[Array, "... d"]:
        r"""The target's coordinates $x = \mu + s\,y$."""
        return self.mean + self.scale * y

    def from_target(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return (x - self.mean) / self.scale


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

    def target_score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$\nabla\log\gamma(x)$, clipped to `score_clip`."""
        grad = jax.grad(self.target.log_prob)(x)
        if self.score_clip is None:
            return grad
        return jnp.clip(grad, -self.score_clip, self.score_clip)

    def score(self, beta: Scalar, x: Float[Array, " d"], target_score: Array) -> Float[Array, " d"]:
        r"""$\nabla\log\pi_\beta(x)$, given `target_score` $= \nabla\log\gamma(x)$."""
        prior = -(x - self.mean) * jnp.exp(-2 * self.log_scale)
        return (1 - beta) * prior + beta * target_score


class LangevinKernels(eqx.Module):
    r"""The controlled Langevin kernels of step $k$, both at level $\beta_k$:

    $F_k(x_k \mid x_{k-1}) = \mathcal N(x_{k-1} + \varepsilon_k[\nabla\log\pi_k(x_{k-1}) + u_{k-1}(x_{k-1})], 2\varepsilon_k I)$,
    $B_k(x_{k-1} \mid x_k) = \mathcal N(x_k + \varepsilon_k[\nabla\log\pi_k(x_k) - u_k(x_k)], 2\varepsilon_k I)$,

    with $u_j = u(j/K, \cdot)$ the control at the state's own time, so that each state
    $x_k$ needs one $\nabla\log\gamma(x_k)$ and one $u_k(x_k)$, shared by $B_k$ and
    $F_{k+1}$ (`point`, for `sdekit.simulate` on `path.grid()`). The state is the position
    (`init`, `log_density` and `position` are those of the path; no `move`). With $u = 0$ both kernels
    are unadjusted Langevin steps for $\pi_k$ (annealed importance sampling with ULA
    moves); the learned $u$ makes the forward and backward path laws meet.
    """

    path: AnnealedPath
    control: AbstractController
    move = None
    move_back = None

    def init(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return self.path.prior_sample(key, n)

    def log_density(self, beta: Scalar, x: Float[Array, " d"]) -> Scalar:
        return self.path.log_prob(beta, x)

    def position(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return x

    def extend(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return x

    def point(self, t, x):
        return self.path.target_score(x), self.control(t["time"], x)

    def forward(self, s, t, x, p):
        (grad, u), eps = p, t["step"]
        return x + eps * (self.path.score(t["beta"], x, grad) + u), jnp.sqrt(2 * eps)

    def backward(self, s, t, x, p):
        (grad, u), eps = p, t["step"]
        return x + eps * (self.path.score(t["beta"], x, grad) - u), jnp.sqrt(2 * eps)
