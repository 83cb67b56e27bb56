r"""Underdamped Langevin dynamics along the annealed path: states $z = (x, v)$, position
and velocity, with an exact Ornstein–Uhlenbeck refresh of $v$ and a leapfrog move."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from sdekit import AbstractController, AbstractTarget, gaussian_log_prob

from ._path import AnnealedPath, _inverse_softplus


class PhaseSpace(AbstractTarget):
    r"""$\gamma(x)\,\mathcal N(v; 0, \mathrm{diag}(m)^2)$ on $z = (x, v)$, of dimension $2d$:
    what the underdamped control $u(t, z)$ is built on (a controller sees its dimension
    and, for `pis-grad`, its score). Same normalising constant as the target."""

    target: AbstractTarget
    mass: Float[Array, " d"]

    @property
    def dim(self) -> int:
        return 2 * self.target.dim

    def log_prob(self, z: Float[Array, " 2d"]) -> Scalar:
        x, v = jnp.split(z, 2)
        return self.target.log_prob(x) + gaussian_log_prob(v, 0.0, self.mass)


class Underdamped(eqx.Module):
    r"""The friction $\gamma = \mathrm{softplus}(\rho)$ and mass $m = e^{\mu}$ of the
    underdamped dynamics, one per coordinate (learnable, as the sampler's
    `learn_friction`/`learn_mass` say)."""

    raw_friction: Float[Array, " d"]
    log_mass: Float[Array, " d"]

    def __init__(self, dim: int, friction: float, mass: float):
        self.raw_friction = _inverse_softplus(jnp.full(dim, float(friction)))
        self.log_mass = jnp.full(dim, math.log(mass))

    def friction(self) -> Float[Array, " d"]:
        return jax.nn.softplus(self.raw_friction)

    def mass(self) -> Float[Array, " d"]:
        return jnp.exp(self.log_mass)


class UnderdampedKernels(eqx.Module):
    r"""One OBAB step $k$ of underdamped Langevin dynamics for $\pi_k$ with step $h = \varepsilon_k$:

    - O, the Gaussian step: $v' \sim \mathcal N(a v + (1 - a)\,m\,u_{k-1}(z), m^2(1 - a^2))$
      with $a = e^{-\gamma h}$, $x$ unchanged (a point mass); with $u = 0$ the exact
      Ornstein–Uhlenbeck flow, reversible for $\mathcal N(0, m^2)$;
    - BAB, the move: a leapfrog step $v \mathrel{+}= \tfrac h2\nabla\log\pi_k(x)$,
      $x \mathrel{+}= h\,v/m^2$, $v \mathrel{+}= \tfrac h2\nabla\log\pi_k(x)$, deterministic
      and volume-preserving;
    - the backward kernel reverses the O step with the control's sign flipped,
      $\mathcal N(v; a v' - (1 - a)\,m\,u_k(z_k), m^2(1 - a^2))$, $u_k$ at the new state.

    The control $u(t, z)$ is the velocity half of a controller on `PhaseSpace`. Each state
    needs one $\nabla\log\gamma$ (computed by the move, shared with the next step's first
    kick) and one control evaluation. The extended densities are
    $\pi_k(x)\,\mathcal N(v; 0, m^2)$ (`log_density`), so the weights gain
    $\log\mathcal N(v_K; 0, m^2) - \log\mathcal N(v_0; 0, m^2)$.
    """

    path: AnnealedPath
    control: AbstractController
    dynamics: Underdamped

    def _split(self, z):
        return jnp.split(z, 2)

    def init(self, key: PRNGKeyArray, n: int) -> Float[Array, "n 2d"]:
        """Positions from the prior, velocities from $\\mathcal N(0, m^2)$."""
        k_x, k_v = jax.random.split(key)
        return self.extend(k_v, self.path.prior_sample(k_x, n))

    def extend(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, "n 2d"]:
        """States at the positions `x`, with velocities drawn from $\\mathcal N(0, m^2)$."""
        v = self.dynamics.mass() * jax.random.normal(key, x.shape, x.dtype)
        return jnp.concatenate([x, v], axis=1)

    def log_density(self, beta: Scalar, z: Float[Array, " 2d"]) -> Scalar:
        x, v = self._split(z)
        return self.path.log_prob(beta, x) + gaussian_log_prob(v, 0.0, self.dynamics.mass())

    def position(self, z: Float[Array, "n 2d"]) -> Float[Array, "n d"]:
        return z[:, : z.shape[1] // 2]

    def _velocity_control(self, t, z):
        return self._split(self.control(t["time"], z))[1]

    def point(self, t, z):
        return self.path.target_score(self._split(z)[0]), self._velocity_control(t, z)

    def _refresh(self, t, z, shift):
        x, v = self._split(z)
        gamma_h, m = self.dynamics.friction() * t["step"], self.dynamics.mass()
        a = jnp.exp(-gamma_h)
        std = jnp.concatenate([jnp.zeros_like(m), m * jnp.sqrt(-jnp.expm1(-2 * gamma_h))])
        return jnp.concatenate([x, a * v + (1 - a) * m * shift]), std

    def forward(self, s, t, z, p):
        return self._refresh(t, z, p[1])

    def backward(self, s, t, y, p):
        return self._refresh(t, y, -p[1])

    def _kick(self, t, x, v, grad, sign=1.0):
        return v + sign * 0.5 * t["step"] * self.path.score(t["beta"], x, grad)

    def move(self, s, t, y, p):
        x, v = self._split(y)
        v = self._kick(t, x, v, p[0])
        x = x + t["step"] * v / self.dynamics.mass() ** 2
        grad = self.path.target_score(x)
        z = jnp.concatenate([x, self._kick(t, x, v, grad)])
        return z, (grad, self._velocity_control(t, z))

    def move_back(self, s, t, z, p):
        x, v = self._split(z)
        v = self._kick(t, x, v, p[0], -1.0)
        x = x - t["step"] * v / self.dynamics.mass() ** 2
        return jnp.concatenate([x, self._kick(t, x, v, self.path.target_score(x), -1.0)])
