import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

import sdekit
from sdekit import AbstractProcess, AbstractScore, AbstractTarget

from ._checks import check_draws, check_gradient, check_positive, check_seed
from ._snis import draws_key, snis


class MonteCarloScore(AbstractScore):
    r"""Monte-Carlo score of the noised target (reverse-diffusion Monte Carlo), for `reverse-sde`/`pf-ode`.

    $\nabla_x \log p_t(x)$ by self-normalised importance sampling from the unnormalised
    target. `draws`: draws per evaluation; `chunk`: draws held at once per point (`None`:
    all); `gradient`: `"stein"` (Tweedie, values only), `"autodiff"` (target-score
    identity) or `"auto"` (autodiff where $a_t \ge \sigma_t$, else Stein);
    `common_draws`: the same draws for every `(t, x)`; `seed`: the key of the draws;
    `proposal_std`: std $s$ of the Gaussian stand-in whose posterior is the proposal
    (`"prior"`, default: the process's prior std; `None`: $s = \infty$, the plain proposal
    $\mathcal N(x/a_t, \sigma_t^2/a_t^2 I)$). `MonteCarloScore(target="gmm40")` works alone.

    For a process with $Y_t \mid Y_0 \sim \mathcal N(a_t Y_0, \sigma_t^2 I)$
    (`process.marginal(t)`; `vp` with any schedule, and every built-in process),
    $p(x_0 \mid x_t = x) \propto \gamma(x_0)\,\mathcal N(x; a_t x_0, \sigma_t^2 I)$.

    **Proposal** (`proposal_std` $= s$): the posterior of $x_0$ given $x_t = x$ when the
    target is replaced by the Gaussian stand-in $\mathcal N(0, s^2 I)$,
    $q = \mathcal N\big(\tfrac{a_t s^2}{a_t^2 s^2 + \sigma_t^2} x,\ \tfrac{s^2\sigma_t^2}{a_t^2 s^2 + \sigma_t^2} I\big)$,
    with log-weights $\log\gamma(x_0) - \log\mathcal N(x_0; 0, s^2 I)$ (softmax over the draws,
    in log space). The default `"prior"` takes $s$ = the std of the process's prior
    (`reference_std(t_max)`: $\sigma$ for `vp`), the Gaussian the process already pairs
    with the target. `None` ($s = \infty$) is the plain reverse-diffusion Monte-Carlo
    proposal $\mathcal N(x/a_t, \sigma_t^2/a_t^2 I)$, the Gaussian factor alone: near `t_max`
    it is $\sigma_t/a_t \approx 150$ wide (default `vp`), almost no draw lands on the target's
    mass, the weights collapse on one draw and the score is that draw's $Z/\sigma_t$,
    $O(1)$ instead of $\approx -x$; `reverse-sde` then lets $x$ grow like $1/a_t$ (funnel:
    $|x|$ up to 800, and NaN where every draw overflows to $\gamma = 0$ in float32). With
    $s$ finite the proposal tends to $\mathcal N(0, s^2 I)$ there, and to the Gaussian factor
    as $t \to 0$. Choose $s$ at least the target's spread (the weights' tails grow like
    $e^{|x_0|^2/2s^2}$ otherwise).

    **Values:** the score is $\sum_j \bar w_j v_j$ with
    $v_j = \nabla\log\gamma(x_0^{(j)}) / a_t$ (`gradient="autodiff"`: the target-score
    identity $\nabla\log p_t = \mathbb E[\nabla\log\gamma(x_0) \mid x_t] / a_t$; accurate at small
    $t$) or $v_j = (a_t x_0^{(j)} - x)/\sigma_t^2$ (`gradient="stein"`: Tweedie, values only;
    $= -x/(a_t^2 s^2 + \sigma_t^2) + c_t Z_j$, the stand-in's exact score plus draws of
    variance growing like $1/\sigma_t^2$, undefined at $\sigma_t = 0$).
    `gradient="auto"` takes the first where $a_t \ge \sigma_t$ and the second where
    $a_t < \sigma_t$: for a standard-normal target the ratio of their variances is
    $\sigma_t^2 / a_t^2$ (it evaluates gradients everywhere). `"stein"` is the default: its
    values are weighted means of the draws, bounded by $|x|/\sigma_t^2 + \max_j |Z_j| / \sigma_t$,
    whereas the gradient estimators are heavy-tailed for targets whose gradient grows
    faster than linearly (many-well, funnel): there `reverse-sde` driven by `"auto"` or
    `"autodiff"` sent about half of the trajectories to infinity in our runs (`draws=256`,
    64 steps, `proposal_std=None`), `"stein"` none. On Gaussian mixtures `"auto"` is the
    more accurate.

    Where every draw has $\gamma = 0$ ($\log\gamma = -\infty$) the self-normalised estimate
    is undefined and returned as NaN (no fallback).

    `draws` per evaluation, processed `chunk` at a time with a running log-sum-exp (`N`
    points under `jax.vmap` hold `N x chunk` draws, never `N x draws`).

    **Randomness.** Called as `score(t, x)` without a key, it takes its draws from `key`
    folded with the bits of `t` and a hash of `x` (`common_draws=False`, default:
    independent-looking draws per point, a deterministic but non-smooth field), or from
    `key` alone (`common_draws=True`: common random numbers, a smooth field, best for
    `pf-ode`). `seed` sets `key`; replace it (`eqx.tree_at(lambda s: s.key, score, key)`)
    for fresh draws.
    """

    target: AbstractTarget
    process: AbstractProcess
    key: PRNGKeyArray
    draws: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)
    gradient: str = eqx.field(static=True)
    common_draws: bool = eqx.field(static=True)
    proposal_std: float | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        target: AbstractTarget | str | dict,
        process: AbstractProcess | str | dict = "vp",
        draws: int = 1000,
        chunk: int | None = 100,
        gradient: str = "stein",
        common_draws: bool = False,
        seed: int = 0,
        proposal_std: float | str | None = "prior",
    ):
        target = sdekit.resolve_part("target", target)
        process = sdekit.resolve_part("process", process)
        draws, chunk = check_draws(draws, chunk)
        if not isinstance(common_draws, bool):
            raise ValueError(f"common_draws must be True or False, got {common_draws!r}")
        if proposal_std == "prior":
            proposal_std = float(process.reference_std(process.t_max))
        if proposal_std is not None:
            check_positive(proposal_std=proposal_std)
        self.target, self.process, self.key = target, process, jax.random.key(check_seed(seed))
        self.draws, self.chunk, self.common_draws = draws, chunk, common_draws
        self.gradient = check_gradient(gradient, ("auto",))
        self.proposal_std = None if proposal_std is None else float(proposal_std)

    @property
    def target_evaluations_per_call(self) -> int:
        """Evaluations of $\\log\\gamma$ (with its gradient for `autodiff`) per point and call."""
        return self.draws

    def proposal(self, t: ScalarLike, x: Float[Array, " d"]) -> tuple[Array, Array, Array, Array]:
        r"""`(mean, std, value_offset, value_scale)` at `(t, x)`: the draws are
        $x_0 = \text{mean} + \text{std}\,Z$ and their Stein values
        $(a_t x_0 - x)/\sigma_t^2 = \text{value\_offset} + \text{value\_scale}\,Z$."""
        a, std = self.process.marginal(t)
        if self.proposal_std is None:
            return x / a, std / a, jnp.zeros_like(x), 1.0 / std
        s = self.proposal_std
        # Posterior of x_0 under N(0, s^2 I) given x_t = x: precision a^2/std^2 + 1/s^2.
        denom = (a * s) ** 2 + std**2
        mean = a * s**2 * x / denom
        return mean, s * std / jnp.sqrt(denom), -x / denom, a * s / (std * jnp.sqrt(denom))

    def estimate(self, t: ScalarLike, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """The Monte-Carlo score and its delta-method standard error (norm over coordinates)."""
        a, std = self.process.marginal(t)
        mean, scale, offset, value_scale = self.proposal(t, x)
        # log-weight: log γ(x_0) - log N(x_0; 0, s^2 I), up to a constant (s = ∞: log γ)
        tilt = 0.0 if self.proposal_std is None else 0.5 / self.proposal_std**2
        if self.gradient in ("autodiff", "auto"):
            log_prob_and_grad = jax.value_and_grad(self.target.log_prob)
            stein = (a < std) if self.gradient == "auto" else False

            def fn(z):
                x0 = mean + scale * z
                value, grad = log_prob_and_grad(x0)
                return value + tilt * jnp.sum(x0**2), jnp.where(stein, offset + value_scale * z, grad / a)
        else:
            def fn(z):
                x0 = mean + scale * z
                return self.target.log_prob(x0) + tilt * jnp.sum(x0**2), offset + value_scale * z

        key = draws_key(self.key, self.common_draws, t, x)
        sums = snis(fn, key, x.shape[-1], self.draws, self.chunk, jnp.result_type(x))
        return sums.mean(), sums.std_error()

    def __call__(self, t: ScalarLike, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.estimate(t, x)[0]


mc_score = MonteCarloScore
"""The registered factory: `MonteCarloScore` itself."""
