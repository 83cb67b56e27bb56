import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

import sdekit
from sdekit import (
    AbstractDiffusionSampler,
    AbstractProcess,
    AbstractScore,
    AbstractTarget,
    Samples,
    Spec,
    time_grid,
)


#: diffrax solvers for additive noise; "euler" is sdekit's own exact-kernel scan.
_DIFFRAX_SOLVERS = {
    "heun": (diffrax.Heun, None),
    "sra1": (diffrax.SRA1, diffrax.SpaceTimeLevyArea),
    "shark": (diffrax.ShARK, diffrax.SpaceTimeLevyArea),
}
SOLVERS = ("euler", *_DIFFRAX_SOLVERS)



class ReverseSDE(AbstractDiffusionSampler):
    r"""Reverse-time SDE driven by a score; exact discrete-time log-weights with `euler`.

    The reverse-time SDE $dX = [-f + g^2 s]\,ds + g\,dW$ runs from the prior at `t_max`
    to `t_min` over `steps` time steps. With `solver="euler"` (Euler–Maruyama) each step
    is a Gaussian kernel $F_k$, and the log-weight of a trajectory against the target is
    exact in discrete time,
    $\log w = \log\gamma(x_K) + \sum_k \log B_k(x_{k-1}\mid x_k) - \log\nu(x_0) - \sum_k \log F_k(x_k\mid x_{k-1})$,
    with $B_k$ the process's Gaussian transition (paths and weights from `sdekit.simulate`).
    Other solvers (diffrax's `heun`, `sra1`, `shark`) are higher order but have no
    tractable kernel, so they return no log-weights.

    `spacing`: `auto` (the process's default), `uniform`, `quadratic` (dense near the
    data) or `quadratic-prior`. The parts are taken as `sdekit.resolve_part` does (a
    registered name, a `{"name": ..., **options}` dict, or an object), so
    `ReverseSDE(target="gmm40")` works alone.
    """

    process: AbstractProcess
    score: AbstractScore
    target: AbstractTarget | None
    ts: Float[Array, " K+1"]
    solver: str = eqx.field(static=True)

    def __init__(
        self,
        target: Spec | None = None,
        process: Spec = "vp",
        score: Spec = "exact",
        steps: int = 500,
        solver: str = "euler",
        spacing: str = "auto",
    ):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.target = None if target is None else sdekit.resolve_part("target", target)
        self.process = sdekit.resolve_part("process", process)
        parts = {"process": self.process} | ({} if target is None else {"target": self.target})
        self.score = sdekit.resolve_part("score", score, **parts)
        self.ts = time_grid(self.process, steps, None if spacing == "auto" else spacing)
        self.solver = solver

    def drift(self, t, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The generative drift $-f(t, x) + g(t)^2 s(t, x)$ (per unit of generative time)."""
        g = self.process.diffusion(t)
        return -self.process.drift(t, x) + g**2 * self.score(t, x)

    def kernel(self, t_a, t_b, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Mean and std of the Euler–Maruyama step from process time `t_a` to `t_b < t_a`."""
        h = t_a - t_b
        return x + h * self.drift(t_a, x), self.process.diffusion(t_a) * jnp.sqrt(h)

    def backward_kernel(self, t_a, t_b, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Mean and std of the backward kernel $B_k$: the process's transition from `t_b` to `t_a`."""
        coef, std = self.process.transition(t_b, t_a)
        return coef * x, std

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        dim = self._dim()
        k_prior, k_path = jax.random.split(key)
        x0 = self.process.prior_sample(k_prior, (n, dim))
        if self.solver != "euler":
            return Samples(self.sample_from(k_path, x0), None)
        path = sdekit.simulate(k_path, x0, self.ts, self.kernel, self.backward_kernel)
        return Samples(path.x, path.log_weights(self.target.log_prob, self.process.prior_log_prob))

    def _dim(self) -> int:
        if self.target is not None:
            return self.target.dim
        raise ValueError("ReverseSDE without a target needs sample_from(key, x0) instead")

    @eqx.filter_jit
    def sample_from(self, key: PRNGKeyArray, x0: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Run the reverse SDE from given prior draws `x0` (no log-weights)."""
        if self.solver == "euler":
            return sdekit.simulate(key, x0, self.ts, self.kernel).x
        return jax.vmap(self._diffrax)(jax.random.split(key, x0.shape[0]), x0)

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


reverse_sde = ReverseSDE
"""The registered sampler `reverse-sde`: `ReverseSDE` itself."""
