import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

from sdekit import (
    AbstractProcess,
    AbstractSampler,
    AbstractScore,
    AbstractTarget,
    Samples,
    gaussian_log_prob,
    time_grid,
)

#: diffrax solvers for additive noise; "euler" is sdekit's own exact-kernel scan.
_DIFFRAX_SOLVERS = {
    "heun": (diffrax.Heun, None),
    "sra1": (diffrax.SRA1, diffrax.SpaceTimeLevyArea),
    "shark": (diffrax.ShARK, diffrax.SpaceTimeLevyArea),
}
SOLVERS = ("euler", *_DIFFRAX_SOLVERS)


class ReverseSDE(AbstractSampler):
    r"""The reverse-time SDE $dX = [-f + g^2 s]\,ds + g\,dW$ from the prior at `t_max` to `t_min`.

    With `solver="euler"` (Euler–Maruyama) each step is a Gaussian kernel $F_k$, and the
    log-weight of a trajectory against the target is exact in discrete time,
    $\log w = \log\gamma(x_K) + \sum_k \log B_k(x_{k-1}\mid x_k) - \log\nu(x_0) - \sum_k \log F_k(x_k\mid x_{k-1})$,
    with $B_k$ the process's Gaussian transition. Other solvers (diffrax's `heun`, `sra1`,
    `shark`) are higher order but have no tractable kernel, so they return no log-weights.
    """

    process: AbstractProcess
    score: AbstractScore
    target: AbstractTarget | None
    ts: Float[Array, " K+1"]
    solver: str = eqx.field(static=True)

    def drift(self, t, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The generative drift $-f(t, x) + g(t)^2 s(t, x)$ (per unit of generative time)."""
        g = self.process.diffusion(t)
        return -self.process.drift(t, x) + g**2 * self.score(t, x)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        dim = self._dim()
        k_prior, k_path = jax.random.split(key)
        x0 = self.process.prior_sample(k_prior, (n, dim))
        if self.solver == "euler":
            return self._euler(k_path, x0)
        keys = jax.random.split(k_path, n)
        return Samples(jax.vmap(self._diffrax)(keys, x0), None)

    def _dim(self) -> int:
        if self.target is not None:
            return self.target.dim
        raise ValueError("ReverseSDE without a target needs sample_from(key, x0) instead")

    @eqx.filter_jit
    def sample_from(self, key: PRNGKeyArray, x0: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Run the reverse SDE from given prior draws `x0` (no log-weights)."""
        if self.solver == "euler":
            return self._euler(key, x0, weights=False).x
        return jax.vmap(self._diffrax)(jax.random.split(key, x0.shape[0]), x0)

    def _euler(self, key, x0, weights: bool = True) -> Samples:
        drift = jax.vmap(self.drift, in_axes=(None, 0))

        def step(carry, inputs):
            x, log_w = carry
            t_a, t_b, k = inputs
            h = t_a - t_b
            mean = x + h * drift(t_a, x)
            std = self.process.diffusion(t_a) * jnp.sqrt(h)
            x_new = mean + std * jax.random.normal(k, x.shape)
            if weights:
                coef, std_b = self.process.transition(t_b, t_a)
                log_w += gaussian_log_prob(x, coef * x_new, std_b)
                log_w -= gaussian_log_prob(x_new, mean, std)
            return (x_new, log_w), None

        keys = jax.random.split(key, self.ts.shape[0] - 1)
        log_w0 = jnp.zeros(x0.shape[0])
        if weights:
            log_w0 -= jax.vmap(self.process.prior_log_prob)(x0)
        (x, log_w), _ = jax.lax.scan(step, (x0, log_w0), (self.ts[:-1], self.ts[1:], keys))
        if not weights or self.target is None:
            return Samples(x, None)
        return Samples(x, log_w + jax.vmap(self.target.log_prob)(x))

    def _diffrax(self, key, x0: Float[Array, " d"]) -> Float[Array, " d"]:
        # Generative time u = t_max - t runs forward, so diffrax sees an ordinary SDE.
        t_max = self.ts[0]
        solver_cls, levy = _DIFFRAX_SOLVERS[self.solver]
        u_grid = t_max - self.ts
        bm_kwargs = {} if levy is None else {"levy_area": levy}
        brownian = diffrax.UnsafeBrownianPath(shape=x0.shape, key=key, **bm_kwargs)
        drift = diffrax.ODETerm(lambda u, x, _: self.drift(t_max - u, x))
        # Isotropic noise g(t) I: a diagonal operator (diffrax >= 0.7 contracts an array
        # diffusion with dW, which would turn g * ones(d) . dW into a scalar).
        noise = diffrax.ControlTerm(
            lambda u, x, _: lx.DiagonalLinearOperator(
                jnp.full_like(x, self.process.diffusion(t_max - u))
            ),
            brownian,
        )
        sol = diffrax.diffeqsolve(
            diffrax.MultiTerm(drift, noise),
            solver_cls(),
            t0=u_grid[0],
            t1=u_grid[-1],
            dt0=None,
            y0=x0,
            stepsize_controller=diffrax.StepTo(ts=u_grid),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=None,
            # diffrax's default (recursive-checkpoint) adjoint refuses UnsafeBrownianPath;
            # sampling needs no reverse-mode gradient through the solve.
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1]


def reverse_sde(
    target: AbstractTarget | None = None,
    process: AbstractProcess | str = "vp",
    score: AbstractScore | str = "exact",
    steps: int = 500,
    solver: str = "euler",
    spacing: str = "auto",
) -> ReverseSDE:
    """Reverse-time SDE driven by a score; exact discrete-time log-weights with `euler`.

    `steps`: number of time steps; `solver`: `euler` (Euler–Maruyama, with log-weights),
    `heun`, `sra1` or `shark` (diffrax); `spacing`: `auto` (the process's default),
    `uniform`, `quadratic` (dense near the data) or `quadratic-prior`.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    ts = time_grid(process, steps, None if spacing == "auto" else spacing)
    return ReverseSDE(process, score, target, ts, solver)
