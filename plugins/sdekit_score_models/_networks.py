"""Score networks: a direct score net $s_\\theta(t, x)$ and a potential net $u_\\theta(t, x)$."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

from sdekit import AbstractPotentialScore, AbstractProcess, AbstractScore

__all__ = ["ACTIVATIONS", "INPUT_SCALES", "KINDS", "PotentialNet", "ScoreNet", "TimeEmbedding", "score_network"]

#: Activations by name (smooth ones only: the Fokker–Planck residual differentiates the
#: network two or three times).
ACTIVATIONS = {
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}
#: Network kinds: a direct score net, or a potential net whose gradient is the score.
KINDS = ("score", "potential")
SCALES = ("auto", "sigma", "none")
INPUT_SCALES = ("none", "marginal")


class TimeEmbedding(eqx.Module):
    r"""The network's view of time: $t/T$, the log noise level $c = \log\sigma_t$ (the
    transition std from the data), and, with `features` $= K > 0$, $\sin(\omega_k c)$,
    $\cos(\omega_k c)$ for $K$ frequencies geometrically spaced in $[\frac12, \omega_{\max}]$.

    The score changes fastest near $t = 0$, where $\sigma_t$ is small; in $\log\sigma_t$
    that change is spread out evenly, so a smooth network resolves it.
    """

    T: float = eqx.field(static=True)
    features: int = eqx.field(static=True)
    max_frequency: float = eqx.field(static=True)

    @property
    def size(self) -> int:
        return 2 + 2 * self.features

    def __call__(self, t: ScalarLike, sigma: ScalarLike) -> Float[Array, " size"]:
        c = jnp.log(sigma)
        base = jnp.stack([jnp.asarray(t / self.T, c.dtype), c])
        if self.features == 0:
            return base
        omega = jnp.geomspace(0.5, self.max_frequency, self.features)
        return jnp.concatenate([base, jnp.sin(omega * c), jnp.cos(omega * c)])


class _Net(AbstractScore):
    """What both networks share: an MLP on `(x / c_t, emb(t))`, divided by $\\sigma_t$ if
    scaled; $c_t = \\sqrt{a_t^2 + \\sigma_t^2}$ with `input_scale="marginal"`, else 1."""

    time: TimeEmbedding
    mlp: eqx.nn.MLP
    process: AbstractProcess
    scaled: bool = eqx.field(static=True)
    input_scale: str = eqx.field(static=True, default="none")

    def _raw(self, t: ScalarLike, x: Float[Array, " d"]) -> Array:
        a, sigma = self.process.marginal(t)
        if self.input_scale == "marginal":
            x = x / jnp.sqrt(a**2 + sigma**2)
        out = self.mlp(jnp.concatenate([x, self.time(t, sigma)]))
        return out / sigma if self.scaled else out


class ScoreNet(_Net):
    r"""A direct score network $s_\theta(t, x) = \mathrm{MLP}(x, \mathrm{emb}(t))$
    (divided by the transition std $\sigma_t$ when scaled)."""

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self._raw(t, x)


class PotentialNet(_Net, AbstractPotentialScore):
    r"""A potential network: a scalar $u_\theta(t, x) = \mathrm{MLP}(x, \mathrm{emb}(t))$ (an
    unnormalised $\log p_t$), whose gradient is the score, $s_\theta = \nabla_x u_\theta$.

    An `sdekit.AbstractPotentialScore`, so the log-density Fokker–Planck residual applies."""

    def potential(self, t: ScalarLike, x: Float[Array, " d"]) -> Scalar:
        """$u_\\theta(t, x)$."""
        return self._raw(t, x)

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return jax.grad(self.potential, argnums=1)(t, x)


def _check_choices(**options: tuple[str, tuple[str, ...]]) -> None:
    for name, (value, choices) in options.items():
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def score_network(
    dim: int,
    process: AbstractProcess,
    kind: str = "potential",
    width: int = 64,
    depth: int = 3,
    activation: str = "softplus",
    time_features: int = 8,
    max_frequency: float = 8.0,
    scale: str = "auto",
    input_scale: str = "none",
    *,
    key: PRNGKeyArray,
) -> ScoreNet | PotentialNet:
    r"""A score network for data of dimension `dim` under `process`.

    **Arguments:**

    - `kind`: `"potential"` (a scalar net $u_\theta$, score $\nabla_x u_\theta$) or
      `"score"` (a direct score net).
    - `width`, `depth`: the MLP's hidden width and number of hidden layers.
    - `activation`: `softplus`, `silu`, `gelu` or `tanh`.
    - `time_features`, `max_frequency`: the time embedding (`TimeEmbedding`); 0 features
      gives the MLP $t/T$ and $\log\sigma_t$ only. It needs $\sigma_t > 0$ on the
      process's $[t_{\min}, t_{\max}]$ (for `pbm`: $t_{\min} > 0$).
    - `scale`: `"sigma"` divides the output by the transition std $\sigma_t$ (the score of
      the noised data is $O(1/\sigma_t)$ near $t = 0$), `"none"` does not; `"auto"` is
      `"sigma"` for a score net and `"none"` for a potential net.
    - `input_scale`: `"marginal"` feeds the MLP $x / \sqrt{a_t^2 + \sigma_t^2}$ (the std of
      $x_t = a_t x_0 + \sigma_t z$ for unit-variance data: an input of size $O(1)$ at every
      $t$), `"none"` (the default) feeds $x$. It is the identity for `vp` with `sigma=1`; under
      `pbm` $x_t$ shrinks like $\sqrt{T - t}$ towards the pinned end, and a net on the raw
      $x$ cannot resolve the score there, so use `"marginal"` for `pbm`.
    """
    _check_choices(kind=(kind, KINDS), activation=(activation, tuple(ACTIVATIONS)),
                   scale=(scale, SCALES), input_scale=(input_scale, INPUT_SCALES))
    for name, value, least in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 0),
                               ("time_features", time_features, 0)):
        if isinstance(value, bool) or not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not max_frequency >= 0.5:
        raise ValueError(f"max_frequency must be >= 0.5, got {max_frequency!r}")
    for t in (process.t_min, process.t_max):
        if not float(process.marginal(t)[1]) > 0:
            raise ValueError(
                f"the time embedding uses log sigma_t, but the process's transition std sigma_t is 0 "
                f"at t={t} (pbm is pinned: sigma_t = 0 at t = 0 and T); give the process a "
                f"t_min/t_max where it is positive, e.g. t_min=1e-3"
            )
    time = TimeEmbedding(float(process.T), time_features, float(max_frequency))
    out = "scalar" if kind == "potential" else dim
    mlp = eqx.nn.MLP(dim + time.size, out, width, depth, activation=ACTIVATIONS[activation], key=key)
    scaled = scale == "sigma" or (scale == "auto" and kind == "score")
    cls = PotentialNet if kind == "potential" else ScoreNet
    return cls(time, mlp, process, scaled, input_scale)
