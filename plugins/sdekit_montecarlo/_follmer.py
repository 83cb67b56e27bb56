
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

import sdekit
from sdekit import (
    AbstractDiffusionSampler,
    AbstractPathSampler,
    AbstractProcess,
    AbstractScore,
    AbstractTarget,
    Samples,
    Spec,
    time_grid,
)

from ._checks import check_draws, check_gradient, check_seed
from ._snis import draws_key, snis



def _pinned(process: Spec, what: str) -> AbstractProcess:
    r"""The process `process` describes, checked to be a pinned Brownian motion: constant
    diffusion $\sigma$, reference std $\sigma\sqrt{T - t}$ (zero at `T`, $\sigma\sqrt T$ at 0)
    and drift $-y / (T - t)$, as the registered `pbm`."""
    process = sdekit.resolve_part("process", process)
    T = process.T
    g, ref = process.diffusion(0.0), jax.vmap(process.reference_std)(jnp.array([0.0, 0.5 * T, T]))
    drift = process.drift(0.5 * T, jnp.ones(1))
    expected = g * jnp.sqrt(jnp.array([T, 0.5 * T, 0.0]))
    ok = (
        jnp.allclose(process.diffusion(0.5 * T), g, rtol=1e-5)
        and jnp.allclose(ref, expected, rtol=1e-5, atol=1e-6 * g)
        and jnp.allclose(drift, -2.0 / T, rtol=1e-5)
    )
    if not ok:
        raise ValueError(
            f"{what} is the Föllmer drift of the pinned Brownian motion reference and needs "
            f"a pinned process (constant diffusion, reference std sigma*sqrt(T - t), drift "
            f"-y/(T - t)) such as 'pbm', got {type(process).__name__} (reference std "
            f"{[round(float(r), 6) for r in ref]} at t = 0, T/2, T; expected "
            f"{[round(float(r), 6) for r in expected]}); compose it with process='pbm'"
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
    numbers: a smooth field, errors correlated across points; for ODE solvers). `seed`
    sets `key`; the `follmer` sampler replaces it with a fresh one at every call.

    `process` must be a pinned Brownian motion (checked by its behaviour: constant
    diffusion, reference std $\sigma\sqrt{T - t}$, drift $-y/(T - t)$), such as `pbm`.
    `FollmerDrift(target="funnel")` works alone.
    """

    target: AbstractTarget
    process: AbstractProcess
    key: PRNGKeyArray
    draws: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)
    gradient: str = eqx.field(static=True)
    common_draws: bool = eqx.field(static=True)

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        draws: int = 1000,
        chunk: int | None = 100,
        gradient: str = "autodiff",
        common_draws: bool = False,
        seed: int = 0,
    ):
        self.draws, self.chunk = check_draws(draws, chunk)
        if not isinstance(common_draws, bool):
            raise ValueError(f"common_draws must be True or False, got {common_draws!r}")
        self.target = sdekit.resolve_part("target", target)
        self.process = _pinned(process, "score 'follmer'")
        self.key = jax.random.key(check_seed(seed))
        self.gradient, self.common_draws = check_gradient(gradient), common_draws

    @property
    def target_evaluations_per_call(self) -> int:
        """Evaluations of $\\log\\gamma$ (with its gradient for `autodiff`) per point and call."""
        return self.draws

    def log_h(self, y: Float[Array, " d"]) -> Scalar:
        r"""$\log h(y) = \log\gamma(y) + |y|^2 / (2\sigma^2 T)$, up to a constant."""
        # sigma^2 T: the variance of the reference's end point N(0, sigma^2 T)
        var_T = self.process.diffusion(0.0) ** 2 * self.process.T
        return self.target.log_prob(y) + 0.5 * jnp.sum(y**2) / var_T

    def estimate(self, t: ScalarLike, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """The Monte-Carlo control $\\hat u(t, x)$ and its delta-method standard error (norm)."""
        scale = self.process.diffusion(t) * jnp.sqrt(t)
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


follmer_drift = FollmerDrift
"""The registered score `follmer`: `FollmerDrift` itself."""


class FollmerSampler(AbstractDiffusionSampler, AbstractPathSampler):
    r"""Föllmer sampler: the pinned-Brownian-motion SDE with the Monte-Carlo Föllmer drift; no training.

    Generation runs Euler–Maruyama kernels
    $F_k(x_k \mid x_{k-1}) = \mathcal N(x_{k-1} + h_k \sigma^2 \hat u(t_{k-1}, x_{k-1}), \sigma^2 h_k I)$
    (the reference, Brownian motion pinned at 0 at `T`, has no drift in generative time)
    from the prior over the time grid of `steps` steps, and scores them against the
    bridge's Gaussian transitions $B_k$ with `sdekit.simulate`, so
    $\log w = \log\gamma(x_K) + \sum_k [\log B_k(x_{k-1}\mid x_k) - \log F_k(x_k\mid x_{k-1})] - \log\nu(x_0)$
    exactly, whatever the Monte-Carlo error of the drift: the drift at step $k$ depends
    only on $x_{k-1}$ and on draws independent of the path's Gaussian noise. Each call
    splits its key in two: one for the drift's draws, one for the path.

    `spacing`: the time grid (`auto`: the process's default, `quadratic-prior` for `pbm`);
    `draws`, `chunk`, `gradient`, `common_draws`: those of the `follmer` drift. Cost:
    `n * (steps * draws + 1)` evaluations of $\log\gamma$ (value and gradient with
    `gradient="autodiff"`), reported by `sample_with_stats` and `target_evaluations`.
    """

    drift: FollmerDrift
    ts: Float[Array, " K+1"]

    def __init__(
        self,
        target: Spec,
        process: Spec = "pbm",
        steps: int = 100,
        spacing: str = "auto",
        draws: int = 256,
        chunk: int | None = 64,
        gradient: str = "autodiff",
        common_draws: bool = False,
    ):
        self.drift = FollmerDrift(target, process, draws, chunk, gradient, common_draws, seed=0)
        self.ts = time_grid(self.drift.process, steps, None if spacing == "auto" else spacing)

    @property
    def process(self) -> AbstractProcess:
        return self.drift.process

    @property
    def score(self) -> FollmerDrift:
        """The drift as the score of the `pbm` marginals (`FollmerDrift.__call__`)."""
        return self.drift

    @property
    def target(self) -> AbstractTarget:
        return self.drift.target

    @property
    def steps(self) -> int:
        return self.ts.shape[0] - 1

    def target_evaluations(self, n: int) -> int:
        """Evaluations of $\\log\\gamma$ for `n` samples: `n * (steps * draws + 1)`."""
        return n * (self.steps * self.drift.draws + 1)

    def _kernels(self, key: PRNGKeyArray) -> tuple[sdekit.Kernel, sdekit.Kernel]:
        """The forward and backward kernels, with the drift's draws from `key`."""
        drift = eqx.tree_at(lambda d: d.key, self.drift, key)

        def forward(t_a, t_b, x):
            h, g = t_a - t_b, self.process.diffusion(t_a)
            return x + h * g**2 * drift.control(t_a, x), g * jnp.sqrt(h)

        def backward(t_a, t_b, x):
            coef, std = self.process.transition(t_b, t_a)
            return coef * x, std

        return forward, backward

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        k_drift, k_path = jax.random.split(key)
        k_prior, k_steps = jax.random.split(k_path)
        x0 = self.process.prior_sample(k_prior, (n, self.target.dim))
        path = sdekit.simulate(k_steps, x0, self.ts, *self._kernels(k_drift))
        return Samples(path.x, path.log_weights(self.target.log_prob, self.process.prior_log_prob))

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, int]]:
        """`sample(key, n)` and `{"target_evaluations": ...}`."""
        return self.sample(key, n), {"target_evaluations": self.target_evaluations(n)}

    @eqx.filter_jit
    def sample_from(self, key: PRNGKeyArray, x0: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Run the Föllmer SDE from given prior draws `x0` (no log-weights)."""
        k_drift, k_path = jax.random.split(key)
        return sdekit.simulate(k_path, x0, self.ts, self._kernels(k_drift)[0]).x

    @eqx.filter_jit
    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of trajectories started at target samples `x` and run backwards
        through the kernels $B_k$; their mean is the EUBO, an upper bound on $\log Z$."""
        k_drift, k_path = jax.random.split(key)
        path = sdekit.simulate_backward(k_path, x, self.ts, *self._kernels(k_drift))
        return sdekit.backward_log_weights(path, self.target.log_prob, self.process.prior_log_prob)


follmer = FollmerSampler
"""The registered sampler `follmer`: `FollmerSampler` itself."""
