import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

import sdekit
from sdekit import (
    AbstractController,
    AbstractProcess,
    AbstractSampler,
    AbstractScore,
    AbstractTarget,
    Samples,
    TrainOptions,
    time_grid,
)
from sdekit_processes import PBM
from sdekit_samplers import ControlledSDE

from ._checks import check_draws, check_gradient, check_seed
from ._snis import draws_key, snis


def _pbm(process: AbstractProcess | str, what: str) -> PBM:
    if isinstance(process, str):
        process = sdekit.create("process", process)
    if not isinstance(process, PBM):
        raise ValueError(
            f"{what} is the Föllmer drift of the pinned Brownian motion reference and needs "
            f"process 'pbm', got {type(process).__name__}; compose it with process='pbm' "
            f"(its sigma and T are the reference's)"
        )
    return process


class FollmerDrift(AbstractScore):
    r"""The Schrödinger–Föllmer drift by Monte Carlo, for the `pbm` reference ($\sigma$, $T$).

    In the process's (forward) time $t$, the Föllmer control is
    $u(t, x) = \nabla_x \log \mathbb E_{Z\sim\mathcal N(0, I)}[h(x + \sigma\sqrt t Z)]$,
    $h = \gamma / \mathcal N(0, \sigma^2 T I)$: the generative SDE
    $dX = \sigma^2 u\,ds + \sigma\,dW$ from $X = 0$ at $t = T$ reaches $\pi$ at $t = 0$.
    As a score it returns $s(t, x) = u(t, x) - x / (\sigma^2 (T - t))$, the score of the
    `pbm` marginal $p_t$, so that `reverse-sde` with `process="pbm"` and this score *is*
    the Föllmer SDE (and `exact` is its ground truth on Gaussian mixtures). `control(t, x)`
    returns $u$ itself.

    The expectation is estimated from `draws` standard-normal draws in log space:
    $\hat u = \sum_j \bar w_j v_j$ with $\bar w = \operatorname{softmax}_j \log h(y_j)$,
    $y_j = x + \sigma\sqrt t Z_j$, and $v_j = \nabla \log h(y_j)$ (`gradient="autodiff"`,
    one value-and-gradient of $\log\gamma$ per draw) or $v_j = Z_j / (\sigma\sqrt t)$
    (`gradient="stein"`, Stein's lemma: values only, variance growing like $1/t$, undefined
    at $t = 0$). The draws are processed `chunk` at a time with a running log-sum-exp, so
    `N` points under `jax.vmap` hold `N x chunk` draws at once, never `N x draws`: for
    $N = 10^4$, $M = 10^3$, $d = 10$ (float32, CPU) XLA's temporaries are 305 MiB with
    `chunk=100` against 3.05 GiB unchunked (see `docs/training-free.md`).

    **Randomness.** A score is called as `score(t, x)`, without a key. With
    `common_draws=False` (default) the draws for a point come from `key` folded with the
    bits of `t` and a hash of `x`: independent-looking draws for distinct points, the same
    for the same point (the estimate is a deterministic, non-smooth function of `(t, x)`).
    With `common_draws=True` every `(t, x)` uses the same draws from `key` (common random
    numbers: a smooth field, errors correlated across points; for ODE solvers). The
    `follmer` sampler replaces `key` with a fresh one at every `sample` call.
    """

    target: AbstractTarget
    process: PBM
    key: PRNGKeyArray
    draws: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)
    gradient: str = eqx.field(static=True)
    common_draws: bool = eqx.field(static=True)

    @property
    def target_evaluations_per_call(self) -> int:
        """Evaluations of $\\log\\gamma$ (with its gradient for `autodiff`) per point and call."""
        return self.draws

    def log_h(self, y: Float[Array, " d"]) -> Scalar:
        r"""$\log h(y) = \log\gamma(y) + |y|^2 / (2\sigma^2 T)$, up to a constant."""
        return self.target.log_prob(y) + 0.5 * jnp.sum(y**2) / (self.process.sigma**2 * self.process.T)

    def estimate(self, t: ScalarLike, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """The Monte-Carlo control $\\hat u(t, x)$ and its delta-method standard error (norm)."""
        scale = self.process.sigma * jnp.sqrt(t)
        if self.gradient == "autodiff":
            log_h_and_grad = jax.value_and_grad(self.log_h)

            def fn(z):
                return log_h_and_grad(x + scale * z)
        else:
            def fn(z):
                return self.log_h(x + scale * z), z / scale

        key = draws_key(self.key, self.common_draws, t, x)
        sums = snis(fn, key, x.shape[-1], self.draws, self.chunk, x.dtype)
        return sums.mean(), sums.std_error()

    def control(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The Föllmer control $u(t, x)$ (Monte Carlo)."""
        return self.estimate(t, x)[0]

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.control(t, x) - x / self.process.reference_std(t) ** 2


class _Control(AbstractController):
    """`FollmerDrift.control` as the controller of a `ControlledSDE`."""

    drift: FollmerDrift

    def __call__(self, t, x):
        return self.drift.control(t, x)


class FollmerSampler(AbstractSampler):
    r"""The Föllmer SDE with the Monte-Carlo drift, with exact discrete-time log-weights.

    It is sdekit's `ControlledSDE` (the `pis` simulation: `pbm` reference, Euler–Maruyama
    kernels $F_k$, the bridge's Gaussian backward kernels $B_k$) with `FollmerDrift` as the
    control, so
    $\log w = \log\gamma(x_K) + \sum_k [\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})] - \log\nu(x_0)$
    exactly, whatever the Monte-Carlo error of the drift: the drift at step $k$ depends
    only on $x_{k-1}$ and on draws independent of the path's Gaussian noise. Each `sample`
    call folds a fresh key (split from its own) into the drift.

    Cost: `n * (steps * draws + 1)` evaluations of $\log\gamma$ (value and gradient with
    `gradient="autodiff"`), reported by `sample_with_stats` and `target_evaluations`.
    """

    sde: ControlledSDE

    @property
    def drift(self) -> FollmerDrift:
        return self.sde.controller.drift

    @property
    def target(self) -> AbstractTarget:
        return self.sde.target

    @property
    def steps(self) -> int:
        return self.sde.ts.shape[0] - 1

    def target_evaluations(self, n: int) -> int:
        """Evaluations of $\\log\\gamma$ for `n` samples: `n * (steps * draws + 1)`."""
        return n * (self.steps * self.drift.draws + 1)

    def _with_key(self, key: PRNGKeyArray) -> ControlledSDE:
        return eqx.tree_at(lambda s: s.controller.drift.key, self.sde, key)

    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        k_drift, k_path = jax.random.split(key)
        return self._with_key(k_drift).sample(k_path, n)

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, int]]:
        """`sample(key, n)` and `{"target_evaluations": ...}`."""
        return self.sample(key, n), {"target_evaluations": self.target_evaluations(n)}

    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of trajectories started at target samples `x` and run backwards
        (their mean is the EUBO); see `ControlledSDE.backward_log_weights`."""
        k_drift, k_path = jax.random.split(key)
        return self._with_key(k_drift).backward_log_weights(k_path, x)


def follmer_drift(
    target: AbstractTarget,
    process: AbstractProcess,
    draws: int = 1000,
    chunk: int | None = 100,
    gradient: str = "autodiff",
    common_draws: bool = False,
    seed: int = 0,
) -> FollmerDrift:
    """Monte-Carlo Schrödinger–Föllmer drift for the `pbm` reference (a score for `reverse-sde`).

    `draws`: Monte-Carlo draws per evaluation; `chunk`: draws held at once per point
    (`None`: all); `gradient`: `"autodiff"` (gradient of the log-mean-exp) or `"stein"`
    (Stein's lemma, values only); `common_draws`: the same draws for every `(t, x)`
    instead of draws keyed by `(t, x)`; `seed`: the key of the draws.
    """
    process = _pbm(process, "score 'follmer'")
    draws, chunk = check_draws(draws, chunk)
    if not isinstance(common_draws, bool):
        raise ValueError(f"common_draws must be True or False, got {common_draws!r}")
    return FollmerDrift(
        target, process, jax.random.key(check_seed(seed)), draws, chunk,
        check_gradient(gradient), common_draws,
    )


def follmer(
    target: AbstractTarget,
    process: AbstractProcess | str = "pbm",
    steps: int = 100,
    spacing: str = "auto",
    draws: int = 256,
    chunk: int | None = 64,
    gradient: str = "autodiff",
    common_draws: bool = False,
) -> FollmerSampler:
    """Föllmer sampler: the pinned-Brownian-motion SDE with the Monte-Carlo Föllmer drift; no training.

    `steps`: Euler–Maruyama steps; `spacing`: the time grid (`auto`: the process's
    default, `quadratic-prior` for `pbm`); `draws`, `chunk`, `gradient`,
    `common_draws`: those of the `follmer` drift. Exact discrete-time log-weights.
    """
    drift = follmer_drift(target, process, draws, chunk, gradient, common_draws, seed=0)
    ts = time_grid(drift.process, steps, None if spacing == "auto" else spacing)
    # Never trained: the training options are ControlledSDE's required fields only.
    sde = ControlledSDE(
        process=drift.process, controller=_Control(drift), target=target, ts=ts,
        train_options=TrainOptions(), integrator="euler", loss_name="kl", batch=2,
    )
    return FollmerSampler(sde)
