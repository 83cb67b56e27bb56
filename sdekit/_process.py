import abc
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar, ScalarLike


class AbstractProcess(eqx.Module):
    r"""A forward (noising) SDE $dY = f(t, Y)\,dt + g(t)\,dW$ on $t \in [0, T]$, $Y_0 \sim \pi$.

    Every built-in process has Gaussian transitions
    $Y_t \mid Y_s \sim \mathcal N(a_{s,t} Y_s, \sigma_{s,t}^2 I)$ and a *reference* process
    (the same SDE started from a zero-mean Gaussian) whose marginals are
    $\mathcal N(0, r_t^2 I)$. A generative sampler runs from forward time `t_max` down to
    `t_min`, starting from the reference marginal at `t_max` (the *prior*).
    """

    T: eqx.AbstractVar[float]
    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    @abc.abstractmethod
    def drift(self, t: ScalarLike, y: Float[Array, " d"]) -> Float[Array, " d"]:
        """$f(t, y)$."""

    @abc.abstractmethod
    def diffusion(self, t: ScalarLike) -> Scalar:
        """$g(t)$ (noise is isotropic and state independent)."""

    @abc.abstractmethod
    def transition(self, s: ScalarLike, t: ScalarLike) -> tuple[Scalar, Scalar]:
        r"""`(a, sigma)` with $Y_t \mid Y_s \sim \mathcal N(a Y_s, \sigma^2 I)$, for $s \le t$."""

    @abc.abstractmethod
    def reference_std(self, t: ScalarLike) -> Scalar:
        r"""$r_t$: the reference process's marginal at time $t$ is $\mathcal N(0, r_t^2 I)$."""

    @property
    def default_spacing(self) -> str:
        """The time-grid spacing samplers use unless told otherwise (see `time_grid`)."""
        return "uniform"

    def marginal(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        r"""`(a, sigma)` with $Y_t \mid Y_0 \sim \mathcal N(a Y_0, \sigma^2 I)$."""
        return self.transition(0.0, t)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draws from the prior: the reference marginal at `t_max`; `shape` ends in `d`."""
        return self.reference_std(self.t_max) * jax.random.normal(key, shape)

    def prior_log_prob(self, x: Float[Array, " d"]) -> Scalar:
        """The prior's log-density at one point; override it with `prior_sample`."""
        return gaussian_log_prob(x, 0.0, self.reference_std(self.t_max))


def gaussian_log_prob(x: Array, mean: ArrayLike, std: ArrayLike) -> Scalar:
    r"""$\log \mathcal N(x; \text{mean}, \mathrm{diag}(\text{std})^2)$ summed over the last
    axis; `std` is a scalar or one std per coordinate."""
    z = (x - mean) / std
    d = x.shape[-1]
    log_det = jnp.sum(jnp.broadcast_to(jnp.log(std), (d,)))
    return -0.5 * jnp.sum(z**2, axis=-1) - log_det - 0.5 * d * jnp.log(2 * jnp.pi)


SPACINGS = ("uniform", "quadratic", "quadratic-prior", "cosine")


def time_grid(process: AbstractProcess, steps: int, spacing: str | None = None) -> Float[Array, " K+1"]:
    r"""Forward times from `t_max` down to `t_min`, `steps + 1` of them: the generative grid.

    `spacing`: `"uniform"`; `"quadratic"`, denser near `t_min` (the data end);
    `"quadratic-prior"`, denser near `t_max` (where generation starts); `"cosine"`,
    $u_k = (1 - \cos(\pi k / K))/2$, denser near both ends. `None` takes
    `process.default_spacing`.
    """
    spacing = process.default_spacing if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(steps, bool) or not (isinstance(steps, numbers.Integral) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if spacing == "quadratic":
        u = 1 - (1 - u) ** 2
    elif spacing == "quadratic-prior":
        u = u**2
    elif spacing == "cosine":
        u = 0.5 * (1 - jnp.cos(jnp.pi * u))
    ts = process.t_max - (process.t_max - process.t_min) * u
    # The ends exactly (t_max - (t_max - t_min) is not t_min in floating point: 1e-5 comes
    # back as 1.00136e-5 in float32).
    return ts.at[0].set(process.t_max).at[-1].set(process.t_min)
