"""The plugin's parts: a process, a target, a controller and a diagnostic."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

import sdekit


class OrnsteinUhlenbeck(sdekit.AbstractProcess):
    r"""Ornstein–Uhlenbeck: $dY = -\theta Y\,dt + \sigma\,dW$ on $[0, T]$.

    Transitions $Y_t \mid Y_s \sim \mathcal N(e^{-\theta(t-s)} Y_s,
    \frac{\sigma^2}{2\theta}(1 - e^{-2\theta(t-s)}) I)$; the reference is the stationary
    law $\mathcal N(0, \frac{\sigma^2}{2\theta} I)$ at every time. `theta` and `sigma`
    positive, `0 <= t_min < t_max <= T`.
    """

    theta: float = 1.0
    sigma: float = 1.4142135623730951
    T: float = 4.0
    t_min: float = 0.0
    t_max: float = 4.0

    def __check_init__(self):
        for name in ("theta", "sigma"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"ou: {name} must be positive, got {value!r}")
        if not 0 <= self.t_min < self.t_max <= self.T:
            raise ValueError(f"ou: need 0 <= t_min < t_max <= T, got t_min={self.t_min!r}, "
                             f"t_max={self.t_max!r}, T={self.T!r}")

    def drift(self, t: ScalarLike, y: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$-\theta y$."""
        return -self.theta * y

    def diffusion(self, t: ScalarLike) -> Scalar:
        r"""$\sigma$, constant."""
        return jnp.asarray(self.sigma, dtype=float)

    def transition(self, s: ScalarLike, t: ScalarLike) -> tuple[Scalar, Scalar]:
        r"""`(a, std)` of $Y_t \mid Y_s$; `expm1` keeps short steps accurate."""
        h = jnp.asarray(t, dtype=float) - s
        a = jnp.exp(-self.theta * h)
        var = self.sigma**2 / (2 * self.theta) * -jnp.expm1(-2 * self.theta * h)
        return a, jnp.sqrt(var)

    def reference_std(self, t: ScalarLike) -> Scalar:
        r"""The stationary std $\sigma / \sqrt{2\theta}$, at every time."""
        return jnp.full((), self.sigma / (2 * self.theta) ** 0.5, dtype=float)


class Ring(sdekit.AbstractTarget):
    r"""`modes` equal Gaussians (std `scale`) on a circle of `radius` in the plane, times
    $Z = e^{\text{log\_z}}$; it knows its exact samples, `log_Z` and its mixture form
    (so the `exact` score works with it under every process)."""

    modes: int = eqx.field(static=True, default=8)
    radius: float = eqx.field(static=True, default=4.0)
    scale: float = eqx.field(static=True, default=0.5)
    log_z: float = eqx.field(static=True, default=0.0)
    dim: int = eqx.field(static=True, default=2, init=False)

    def __check_init__(self):
        if not (isinstance(self.modes, int) and self.modes >= 1):
            raise ValueError(f"ring: modes must be a positive int, got {self.modes!r}")
        if not self.radius >= 0:
            raise ValueError(f"ring: radius must be >= 0, got {self.radius!r}")
        if not self.scale > 0:
            raise ValueError(f"ring: scale must be positive, got {self.scale!r}")

    @property
    def mixture(self) -> sdekit.GaussianMixture:
        """The normalised target as a Gaussian mixture."""
        angles = 2 * jnp.pi * jnp.arange(self.modes) / self.modes
        means = self.radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
        covs = jnp.broadcast_to(self.scale**2 * jnp.eye(2), (self.modes, 2, 2))
        return sdekit.GaussianMixture(jnp.ones(self.modes), means, covs)

    def log_prob(self, x: Float[Array, " 2"]) -> Scalar:
        r"""$\log\gamma(x) = \log\pi(x) + \text{log\_z}$."""
        return self.mixture.log_prob(x) + self.log_z

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
        """`n` exact samples."""
        return self.mixture.sample(key, n)

    @property
    def log_Z(self) -> float:
        """`log_z`."""
        return self.log_z


class LinearControl(sdekit.AbstractController):
    r"""A learned field linear in $x$ and in time: $u(t, x) = (a_0 + a_1 s) \odot x + b_0 + b_1 s$
    with $s = t / T$ ($T$ the process's horizon), initialised to `init_scale` times
    standard normals drawn from `seed`."""

    a: Float[Array, "2 d"]
    b: Float[Array, "2 d"]
    horizon: float = eqx.field(static=True)

    def __init__(self, target: sdekit.Spec, process: sdekit.Spec = "ou", seed: int = 0,
                 init_scale: float = 0.01):
        target = sdekit.resolve_part("target", target)
        process = sdekit.resolve_part("process", process)
        ka, kb = jax.random.split(jax.random.key(seed))
        self.a = init_scale * jax.random.normal(ka, (2, target.dim))
        self.b = init_scale * jax.random.normal(kb, (2, target.dim))
        self.horizon = float(process.T)

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """$u(t, x)$ for one point."""
        s = t / self.horizon
        return (self.a[0] + self.a[1] * s) * x + self.b[0] + self.b[1] * s


@jax.jit
def _shares(mixture: sdekit.GaussianMixture, x: Float[Array, "n d"],
            log_weights: Float[Array, " n"]) -> Float[Array, " K"]:
    """The self-normalised weight of the samples whose most likely component is each mode."""
    nearest = jnp.argmax(jax.vmap(mixture.responsibilities)(x), axis=1)
    onehot = jax.nn.one_hot(nearest, mixture.weights.shape[0])
    return jax.nn.softmax(log_weights) @ onehot


class ModeBalance(sdekit.AbstractDiagnostic):
    """How the samples spread over the modes of a Gaussian-mixture target: each sample is
    assigned to its most likely component, and the (self-normalised, weighted when the
    samples have log-weights) share of each mode is compared with the mixture's weights.

    Returns `mode_tv` (total variation distance, 0 to 1), `modes_visited` (the fraction of
    modes with a share above `min_share`) and `mode_shares`; `{}` for a target without a
    mixture or without samples."""

    min_share: float = 0.0

    def __call__(self, key: PRNGKeyArray, *, target: sdekit.AbstractTarget | None = None,
                 sampler: sdekit.AbstractSampler | None = None,
                 samples: sdekit.Samples | None = None) -> dict[str, Any]:
        """The mode shares of `samples` under `target.mixture` (the key is not used)."""
        if target is None or samples is None or target.mixture is None:
            return {}
        x = jnp.asarray(samples.x)
        log_w = jnp.zeros(x.shape[0]) if samples.log_weights is None else samples.log_weights
        shares = _shares(target.mixture, x, log_w)
        return {
            "mode_tv": float(0.5 * jnp.sum(jnp.abs(shares - target.mixture.weights))),
            "modes_visited": float(jnp.mean(shares > self.min_share)),
            "mode_shares": [float(s) for s in shares],
        }

    def plot(self, values: dict[str, Any]):
        """A bar chart of the mode shares (`sdekit diagnose` saves it as `mode-balance.png`)."""
        if "mode_shares" not in values:
            return None
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(range(len(values["mode_shares"])), values["mode_shares"])
        ax.set_xlabel("mode")
        ax.set_ylabel("share of the samples")
        ax.set_title(f"mode balance: TV {values['mode_tv']:.3f}")
        return fig
