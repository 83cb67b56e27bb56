
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, ScalarLike

import sdekit
from sdekit import AbstractController, AbstractProcess, AbstractTarget, Spec



def _zero_last(mlp: eqx.nn.MLP) -> eqx.nn.MLP:
    """Zero the last layer, so the controlled process starts as the reference process."""
    last = mlp.layers[-1]
    return eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )


def _mlp(in_size: int, out_size: int, width: int, depth: int, key: PRNGKeyArray) -> eqx.nn.MLP:
    mlp = eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.gelu, key=key)
    return _zero_last(mlp)


def _state_time_mlp(mlp: eqx.nn.MLP, x: Float[Array, " d"], emb: Float[Array, " e"]) -> Array:
    r"""`mlp(concatenate([x, emb]))` for an MLP made by `_mlp`, with its first layer split as
    $W_x x + (W_e\,\mathrm{emb} + b)$: under `vmap` over particles at one time the
    time part is computed once, not per particle (the same function, less work)."""
    first, *rest = mlp.layers
    h = first.weight[:, : x.shape[-1]] @ x + (first.weight[:, x.shape[-1] :] @ emb + first.bias)
    for layer in rest:
        h = layer(mlp.activation(h))
    return h


class FourierTime(eqx.Module):
    r"""Fourier features of $t/T$: $\sin(\omega_i t/T)$, $\cos(\omega_i t/T)$ with
    $\omega_i$ evenly spaced in $[0.1, 100]$ (as in PIS)."""

    features: int = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __call__(self, t: ScalarLike) -> Float[Array, " 2*features"]:
        phase = jnp.linspace(0.1, 100.0, self.features) * (t / self.T)
        return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)])


def _parts(target: Spec, process: Spec) -> tuple[AbstractTarget, AbstractProcess]:
    """The target and process the specs describe (`sdekit.resolve_part`); a controller
    uses the target's dimension (and score) and the process's horizon `T`."""
    # a target object is taken as given: it may hold traced arrays (a controller built
    # inside jax.jit), where check_target's value checks cannot run; compose checks it
    target = target if isinstance(target, AbstractTarget) else sdekit.resolve_part("target", target)
    return target, sdekit.resolve_part("process", process)


def _check(**values: tuple[int, int]) -> None:
    """Raise unless each `name=(value, least)` has an integer `value >= least`."""
    for name, (value, least) in values.items():
        if not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


class TimeMLP(AbstractController):
    r"""A time-embedded MLP $u(t, x) = \mathrm{NN}(x, \mathrm{emb}(t))$, last layer zero-initialised.

    `width` x `depth` hidden layers, `features` Fourier features of $t/T$ ($T$ the
    process's horizon), initialised from `seed`. `TimeMLP(target="funnel")` works alone.
    """

    time: FourierTime
    net: eqx.nn.MLP

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        width: int = 64,
        depth: int = 2,
        features: int = 64,
        seed: int = 0,
    ):
        _check(width=(width, 1), depth=(depth, 0), features=(features, 1))
        target, process = _parts(target, process)
        self.time = FourierTime(features, process.T)
        self.net = _mlp(target.dim + 2 * features, target.dim, width, depth, jax.random.key(seed))

    def __call__(self, t, x):
        return _state_time_mlp(self.net, x, self.time(t))


class PISGrad(AbstractController):
    r"""The PIS-grad network $u(t, x) = \mathrm{NN}(x, \mathrm{emb}(t)) + \mathrm{NN}_t(\mathrm{emb}(t)) \odot \mathrm{clip}(\nabla\log\gamma(x))$.

    `width` x `depth` MLPs, `features` Fourier features of $t/T$, initialised from
    `seed`; both networks' last layers are zero-initialised. `grad_clip` clips each
    component of $\nabla\log\gamma$ to $[-\text{grad\_clip}, \text{grad\_clip}]$ and
    `output_clip` clips each component of $u$; both are part of the model, stated here,
    never hidden. `PISGrad(target="funnel")` works alone.
    """

    time: FourierTime
    state_net: eqx.nn.MLP
    time_net: eqx.nn.MLP
    target: AbstractTarget
    grad_clip: float = eqx.field(static=True)
    output_clip: float = eqx.field(static=True)

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        width: int = 64,
        depth: int = 2,
        features: int = 64,
        grad_clip: float = 100.0,
        output_clip: float = 1e4,
        seed: int = 0,
    ):
        _check(width=(width, 1), depth=(depth, 0), features=(features, 1))
        if not (grad_clip > 0 and output_clip > 0):
            raise ValueError(f"grad_clip and output_clip must be positive, got {grad_clip}, {output_clip}")
        self.target, process = _parts(target, process)
        d = self.target.dim
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.time = FourierTime(features, process.T)
        self.state_net = _mlp(d + 2 * features, d, width, depth, k1)
        self.time_net = _mlp(2 * features, d, width, depth, k2)
        self.grad_clip, self.output_clip = float(grad_clip), float(output_clip)

    def __call__(self, t, x):
        emb = self.time(t)
        grad = jnp.clip(jax.grad(self.target.log_prob)(x), -self.grad_clip, self.grad_clip)
        u = _state_time_mlp(self.state_net, x, emb) + self.time_net(emb) * grad
        return jnp.clip(u, -self.output_clip, self.output_clip)


class LimitedWidth(AbstractController):
    r"""A width-limited control, piecewise constant in time: $u(t, x) = W(t) \tanh(A(t) x + b(t))$.

    `width` hidden units (default: the dimension), `pieces` equal time intervals of
    $[0, T]$; $W$ starts at zero, $A$ and $b$ random from `seed`.
    `LimitedWidth(target="funnel")` works alone.
    """

    W: Float[Array, "pieces d width"]
    A: Float[Array, "pieces width d"]
    b: Float[Array, "pieces width"]
    T: float = eqx.field(static=True)

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        pieces: int = 10,
        width: int | None = None,
        seed: int = 0,
    ):
        target, process = _parts(target, process)
        d = target.dim
        width = d if width is None else width
        _check(width=(width, 1), pieces=(pieces, 1))
        kA, kb = jax.random.split(jax.random.key(seed))
        self.W = jnp.zeros((pieces, d, width))
        self.A = jax.random.normal(kA, (pieces, width, d)) / jnp.sqrt(d)
        self.b = 0.1 * jax.random.normal(kb, (pieces, width))
        self.T = process.T

    def __call__(self, t, x):
        pieces = self.W.shape[0]
        k = jnp.clip(jnp.floor(t / self.T * pieces).astype(int), 0, pieces - 1)
        return self.W[k] @ jnp.tanh(self.A[k] @ x + self.b[k])


pis_grad = PISGrad
"""The registered controller `pis-grad`: `PISGrad` itself."""
time_mlp = TimeMLP
"""The registered controller `mlp`: `TimeMLP` itself."""
limited_width = LimitedWidth
"""The registered controller `limited-width`: `LimitedWidth` itself."""
