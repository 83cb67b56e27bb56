import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

import sdekit
from sdekit import AbstractDiffusionSampler, AbstractProcess, AbstractScore, AbstractTarget, Samples, Spec

from sdekit.fokker_planck import DIVERGENCES, value_and_divergence


_ADAPTIVE = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8}
_FIXED = {"euler": diffrax.Euler, "heun": diffrax.Heun}
SOLVERS = (*_ADAPTIVE, *_FIXED)



class PFODE(AbstractDiffusionSampler):
    r"""Probability-flow ODE (diffrax) with log-likelihoods by the instantaneous change of variables.

    The ODE $dx/dt = f(t, x) - \tfrac12 g(t)^2 s(t, x)$ runs from `t_max` to `t_min`.
    `solver`: adaptive `tsit5`, `dopri5`, `dopri8` (tolerances `rtol`, `atol`; `steps` is
    the step budget) or fixed-step `euler`, `heun` (`steps` steps); `divergence`: `exact`
    or `hutchinson`. The parts are taken as `sdekit.resolve_part` does, so
    `PFODE(target="gmm40")` works alone.

    The density of each sample comes from the instantaneous change of variables,
    $\log q(x_{t_{\min}}) = \log\nu(x_{t_{\max}}) + \int_{t_{\min}}^{t_{\max}} \nabla\cdot v\,dt$,
    with the exact divergence (`divergence="exact"`, a Jacobian trace: small `d`) or
    Hutchinson's estimator with one Rademacher probe per trajectory. Log-weights are
    $\log\gamma(x) - \log q(x)$, honest up to the ODE solver's tolerance.

    Only the part of the divergence that is not Gaussian is integrated numerically. The
    process started from $\mathcal N(0, I)$ has marginals $\mathcal N(0, \rho_t^2 I)$,
    $\rho_t^2 = a_t^2 + \sigma_t^2$, and its flow $v_\rho = f + \tfrac12 g^2 y / \rho_t^2$ has
    $\int_{t_0}^{t_1} \nabla\cdot v_\rho\,dt = d \log(\rho_{t_1} / \rho_{t_0})$ exactly (for the
    linear drifts of every process with Gaussian transitions), so
    $\log q = \log\nu + d\log(\rho_{t_{\max}}/\rho_{t_{\min}}) + \int \nabla\cdot(v - v_\rho)\,dt$.
    The integrand left is bounded where $\nabla\cdot v$ is not (for `pbm`,
    $\nabla\cdot v \approx -d / (2(T - t))$ near $T$). Likewise the state integrated is
    $u = x / \rho_t$, which $v_\rho$ leaves constant, so that the solver's tolerances are
    relative to the scale of $x$ at every $t$ (for `pbm`, $x \sim \sqrt{T - t}$ near $T$).
    """

    process: AbstractProcess
    score: AbstractScore
    target: AbstractTarget | None
    solver: str = eqx.field(static=True)
    divergence: str = eqx.field(static=True)
    rtol: float
    atol: float
    steps: int = eqx.field(static=True)

    def __init__(
        self,
        target: Spec | None = None,
        process: Spec = "vp",
        score: Spec = "exact",
        solver: str = "tsit5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        divergence: str = "exact",
        steps: int = 4096,
    ):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if isinstance(steps, bool) or not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.target = None if target is None else sdekit.resolve_part("target", target)
        self.process = sdekit.resolve_part("process", process)
        parts = {"process": self.process} | ({} if target is None else {"target": self.target})
        self.score = sdekit.resolve_part("score", score, **parts)
        self.solver, self.divergence, self.rtol, self.atol, self.steps = solver, divergence, rtol, atol, steps

    def velocity(self, t, x: Float[Array, " d"]) -> Float[Array, " d"]:
        g = self.process.diffusion(t)
        return self.process.drift(t, x) - 0.5 * g**2 * self.score(t, x)

    def _rho2(self, t) -> Scalar:
        r"""$\rho_t^2$: the variance at `t` of the process started from $\mathcal N(0, I)$."""
        a, sigma = self.process.marginal(t)
        return a**2 + sigma**2

    def _log_rho_ratio(self, x) -> Scalar:
        r"""$d \log(\rho_{t_{\max}} / \rho_{t_{\min}})$, that is $\int \nabla\cdot v_\rho\,dt$."""
        t0, t1 = self.process.t_min, self.process.t_max
        return 0.5 * x.shape[-1] * (jnp.log(self._rho2(t1)) - jnp.log(self._rho2(t0)))

    def _residual_velocity(self, t, y) -> Float[Array, " d"]:
        """`v - v_rho`, whose divergence is integrated numerically."""
        g = self.process.diffusion(t)
        return -0.5 * g**2 * (self.score(t, y) + y / self._rho2(t))

    def _value_and_div(self, t, x, probe) -> tuple[Float[Array, " d"], Scalar]:
        """`(v - v_rho, its divergence)`, from one linearisation (one trace of the score)."""
        exact = self.divergence == "exact"
        return value_and_divergence(lambda y: self._residual_velocity(t, y), x, None if exact else probe)

    def _solve(self, x: Float[Array, " d"], t0, t1, probe) -> tuple[Array, Scalar]:
        """Integrate `(x, ∫ div(v - v_rho) dt)` from `t0` to `t1` (either direction).

        The state is `u = x / rho_t`, which the Gaussian flow `v_rho` leaves constant:
        `du/dt = (v - v_rho)(t, rho u) / rho`, with the same divergence as `v - v_rho`. Its
        scale is O(1) at every `t`, so the solver's tolerances mean the same thing
        everywhere (for `pbm`, `x` shrinks like `sqrt(T - t)` near `T`, where an absolute
        tolerance on `x` let the steps that decide the modes go inaccurate).
        """

        def rhs(t, state, _):
            u, _ = state
            rho = jnp.sqrt(self._rho2(t))
            value, div = self._value_and_div(t, rho * u, probe)
            return value / rho, div

        if self.solver in _ADAPTIVE:
            solver = _ADAPTIVE[self.solver]()
            # A floor of 100 ulps of t on the step. diffrax treats the last 100 ulps before
            # t1 as "the end": a step rejected there is retried at the same midpoint
            # forever (max_steps reached). That happens for `pbm`, whose float32 t_max is
            # only ~17 ulps below the singular T. A forced step of this size costs nothing
            # measurable, as the vector field solved here is bounded near such an end.
            eps = jnp.finfo(jnp.result_type(float)).eps
            dtmin = 100 * eps * jnp.maximum(jnp.abs(t0), jnp.abs(t1))
            controller = diffrax.PIDController(
                rtol=self.rtol, atol=self.atol, dtmin=dtmin, force_dtmin=True
            )
            dt0 = None
        else:
            solver = _FIXED[self.solver]()
            controller = diffrax.ConstantStepSize()
            dt0 = (t1 - t0) / self.steps
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            solver,
            t0=t0,
            t1=t1,
            dt0=dt0,
            y0=(x / jnp.sqrt(self._rho2(t0)), jnp.zeros((), x.dtype)),
            stepsize_controller=controller,
            max_steps=self.steps if self.solver in _ADAPTIVE else self.steps + 1,
        )
        u, acc = sol.ys
        return jnp.sqrt(self._rho2(t1)) * u[-1], acc[-1]

    def _probes(self, key, n, dim):
        if self.divergence == "exact":
            return jnp.zeros((n, dim))
        return jax.random.rademacher(key, (n, dim)).astype(float)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        dim = self.target.dim
        k_prior, k_probe = jax.random.split(key)
        x0 = self.process.prior_sample(k_prior, (n, dim))
        probes = self._probes(k_probe, n, dim)
        t0, t1 = self.process.t_max, self.process.t_min
        x, acc = jax.vmap(lambda x, p: self._solve(x, t0, t1, p))(x0, probes)
        # acc = ∫_{t_max}^{t_min} div(v - v_rho) dt = -∫_{t_min}^{t_max} div(v - v_rho) dt
        log_q = jax.vmap(self.process.prior_log_prob)(x0) + self._log_rho_ratio(x0) - acc
        return Samples(x, jax.vmap(self.target.log_prob)(x) - log_q)

    @eqx.filter_jit
    def sample_from(self, key: PRNGKeyArray, x0: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Run the ODE from given prior draws `x0` (no log-weights; no target needed).

        The ODE is deterministic: `key` (the common signature of diffusion samplers) is
        not used. The density is not tracked: with `divergence="hutchinson"` the
        integrated divergence uses zero probes and costs nothing.
        """
        probes = jnp.zeros_like(x0)
        t0, t1 = self.process.t_max, self.process.t_min
        return jax.vmap(lambda x, p: self._solve(x, t0, t1, p)[0])(x0, probes)

    @eqx.filter_jit
    def log_likelihood(self, x: Float[Array, "n d"], key: PRNGKeyArray | None = None) -> Float[Array, " n"]:
        r"""$\log q(x)$: the model density at `t_min`, by integrating the ODE forward in time."""
        key = jax.random.PRNGKey(0) if key is None else key
        probes = self._probes(key, *x.shape)
        t0, t1 = self.process.t_min, self.process.t_max
        z, acc = jax.vmap(lambda x, p: self._solve(x, t0, t1, p))(x, probes)
        return jax.vmap(self.process.prior_log_prob)(z) + self._log_rho_ratio(x) + acc


pf_ode = PFODE
"""The registered sampler `pf-ode`: `PFODE` itself."""
