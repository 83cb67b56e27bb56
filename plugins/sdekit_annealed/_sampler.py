import functools
import inspect
import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

import sdekit
from sdekit import (
    AbstractController,
    AbstractPathSampler,
    AbstractTarget,
    AbstractTrainable,
    Samples,
    Spec,
    TrainOptions,
    float_arrays_outside_targets,
    log_Z_estimate,
)
from sdekit.metrics import ess, unique_fraction

from ._buffer import Buffer
from ._mcmc import mala_moves
from ._path import AnnealedPath, LangevinKernels, Standardised
from ._underdamped import PhaseSpace, Underdamped, UnderdampedKernels

LOSSES = ("kl", "log-variance")
FITS = ("auto", "mean-field", "laplace", "off")
DYNAMICS = ("overdamped", "underdamped")


class Segments(eqx.Module):
    """What each segment of a run leaves, stacked over the `S` segments.

    **Fields:**

    - `log_G`: `(S, n)` the segment's incremental log-weights.
    - `log_W`: `(S, n)` the normalised log-weights of the particles entering the segment.
    - `ess`: `(S,)` the ESS after the segment's reweighting (before any resampling).
    - `resampled`: `(S,)` whether the particles were resampled after the segment.
    - `acceptance`: `(S,)` the MALA moves' mean acceptance after the segment (`nan`
      without moves).
    - `paths`: `(S, n, L + 1, D)` the states each particle visited in each segment
      (`L = K / S` steps, `D` the state's size), when asked for; else `None`.
    """

    log_G: Float[Array, "S n"]
    log_W: Float[Array, "S n"]
    ess: Float[Array, " S"]
    resampled: Array
    acceptance: Float[Array, " S"]
    paths: Float[Array, "S n L D"] | None = None


class AnnealedSampler(AbstractPathSampler, AbstractTrainable):
    r"""Controlled Langevin diffusion along an annealed path, in segments with resampling.

    The path $\pi_k \propto \nu^{1-\beta_k}\gamma^{\beta_k}$, $k = 0..K$, goes from the
    Gaussian prior $\nu$ to the target $\gamma$ (`AnnealedPath`); each step is the
    controlled Langevin kernel $F_k$, scored against the backward kernel $B_k$ with the
    control's sign flipped (`LangevinKernels`), simulated by `sdekit.simulate`. The $K$
    steps are cut into `segments` $S$ of equal length. Over segment $s$, from step $a$ to
    step $b$, each particle's weight is multiplied by

    $$G_s = \frac{\pi_b(x_b)}{\pi_a(x_a)}\prod_{k=a+1}^{b}\frac{B_k(x_{k-1}\mid x_k)}{F_k(x_k\mid x_{k-1})},$$

    after which, if the weights' ESS is below `resample_threshold` (and it is not the last
    segment), the particles are resampled (systematic) and their weights equalised; then
    `mcmc_steps` MALA moves leave $\pi_b$ invariant (step size from `mcmc_step_size`,
    adapted after each segment towards an acceptance of 0.574), so the weights stand. The
    returned log-weights keep $\log\hat Z = \log\frac1N\sum_i w_i$ equal to the SMC
    estimate $\sum_s \log\sum_i \bar W_i^{(s-1)} G_s^i$ ($\bar W$ the normalised weights
    entering segment $s$), unbiased for $Z$; weighted averages over the returned samples
    are consistent. With $S = 1$ this is CMCD: $\log w = \log\gamma(x_K) - \log\nu(x_0) +
    \sum_k \log B_k - \log F_k$, exact for any $K$.

    `fit` runs the sampler in the coordinates of a diagonal Gaussian fitted to the target
    (`sdekit.fit_gaussian`, then `Standardised`): `"auto"` (the default) fits by mean-field
    when the target's $\log Z$ is unknown (users' models: NumPyro, log-density files) and
    not for benchmark targets; `"mean-field"`/`"laplace"` always, `"off"` never. The prior
    $\mathcal N(0, \text{prior\_scale}^2)$ and the step sizes are then in the fit's units;
    samples are returned in the target's.

    `dynamics="underdamped"` runs the same scheme on position and velocity
    (`UnderdampedKernels`: an Ornstein–Uhlenbeck refresh of the velocity with friction
    $\gamma$ and mass $m$, then a leapfrog step), the densities extended by
    $\mathcal N(v; 0, m^2)$.

    Losses (`sdekit.train`): `"kl"`, $-\sum_s \sum_i \bar W_i^{(s-1)} \log G_s^i$ with
    reparameterised paths inside each segment (no gradient through the resampling or
    across segment boundaries; for $S = 1$ the reverse KL $-\mathbb E\log w$);
    `"log-variance"`, the mean over segments of $\mathrm{Var}_i \log G_s^i$ on paths
    detached from the parameters, zero exactly when every segment's forward and backward
    path laws agree; with `buffer` $> 0$, on half fresh paths and half drawn from a
    prioritised replay buffer of past ones (`loss_with_state`; SCLD's published training),
    which `sdekit.train` checkpoints with the parameters.
    """

    path: AnnealedPath
    controller: AbstractController
    dynamics: Underdamped | None
    train_options: TrainOptions
    segments: int = eqx.field(static=True)
    resample_threshold: float = eqx.field(static=True)
    mcmc_steps: int = eqx.field(static=True)
    mcmc_step_size: float = eqx.field(static=True)
    loss_name: str = eqx.field(static=True)
    buffer: int = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    learned: tuple[str, ...] = eqx.field(static=True)
    fit_evaluations: int = eqx.field(static=True)

    def __init__(
        self,
        target: Spec,
        controller: Spec = "mlp",
        steps: int = 128,
        segments: int = 1,
        resample_threshold: float = 0.3,
        mcmc_steps: int = 0,
        mcmc_step_size: float = 0.01,
        prior_scale: float = 1.0,
        step_size: float = 0.1,
        score_clip: float | None = None,
        fit: str = "auto",
        loss: str = "kl",
        buffer: int = 0,
        dynamics: str = "overdamped",
        friction: float = 1.0,
        mass: float = 1.0,
        batch: int = 256,
        train_iters: int = 2000,
        learning_rate: float = 3e-3,
        grad_clip: float = 1.0,
        learn_schedule: bool = True,
        learn_step_size: bool = True,
        learn_prior: bool = True,
        learn_friction: bool = True,
        learn_mass: bool = False,
    ):
        _check_options(steps, segments, resample_threshold, mcmc_steps, mcmc_step_size,
                       prior_scale, step_size, score_clip, loss, buffer, batch, dynamics, friction,
                       mass, fit)
        target, self.fit_evaluations = _fitted(sdekit.resolve_part("target", target), fit)
        self.path = AnnealedPath(target, steps, prior_scale, step_size, score_clip)
        self.dynamics = None
        if dynamics == "underdamped":
            self.dynamics = Underdamped(target.dim, friction, mass)
            target = PhaseSpace(target, self.dynamics.mass())
        self.controller = sdekit.resolve_part("controller", controller, target=target)
        self.train_options = TrainOptions(
            steps=train_iters, learning_rate=learning_rate, grad_clip=grad_clip or None
        )
        self.segments, self.resample_threshold = segments, float(resample_threshold)
        self.mcmc_steps, self.mcmc_step_size = mcmc_steps, float(mcmc_step_size)
        self.loss_name, self.buffer, self.batch = loss, buffer, batch
        flags = {"schedule": learn_schedule, "step_size": learn_step_size, "prior": learn_prior}
        if self.dynamics is not None:
            flags |= {"friction": learn_friction, "mass": learn_mass}
        self.learned = ("control", *(name for name, on in flags.items() if on))

    @property
    def target(self):
        target = self.path.target
        return target.target if isinstance(target, Standardised) else target

    def _positions(self, states: Float[Array, "n D"]) -> Float[Array, "n d"]:
        """The states' positions in the target's coordinates."""
        x, target = self.kernels().position(states), self.path.target
        return target.to_target(x) if isinstance(target, Standardised) else x

    def trainable(self) -> PyTree[bool]:
        """The controller and, as `learn_*` says, the schedule, step sizes, prior, friction
        and mass."""
        spec = jax.tree.map(lambda _: False, self)
        spec = eqx.tree_at(lambda s: s.controller, spec, float_arrays_outside_targets(self.controller))
        fields = {
            "schedule": lambda s: s.path.schedule,
            "step_size": lambda s: s.path.raw_step,
            "prior": lambda s: (s.path.mean, s.path.log_scale),
            "friction": lambda s: s.dynamics.raw_friction,
            "mass": lambda s: s.dynamics.log_mass,
        }
        for name in self.learned[1:]:
            spec = eqx.tree_at(fields[name], spec, replace_fn=lambda _: True)
        return spec

    def kernels(self) -> LangevinKernels | UnderdampedKernels:
        """The kernels of the chosen dynamics."""
        if self.dynamics is None:
            return LangevinKernels(self.path, self.controller)
        return UnderdampedKernels(self.path, self.controller, self.dynamics)

    def _segment_grids(self) -> dict[str, Array]:
        """The grid cut into `segments` overlapping pieces: leaves of shape `(S, K/S + 1)`."""
        length = self.path.steps // self.segments
        index = jnp.arange(self.segments)[:, None] * length + jnp.arange(length + 1)[None, :]
        return jax.tree.map(lambda a: a[index], self.path.grid())

    def run(self, key: PRNGKeyArray, n: int, *, detach: bool = False, keep_paths: bool = False
            ) -> tuple[Float[Array, "n D"], Float[Array, " n"], Segments]:
        """`n` particles through all segments: their states, log-weights (whose log-mean-exp
        is $\\log\\hat Z$) and the per-segment `Segments`. `detach`: paths without gradients;
        `keep_paths`: return every state visited (`Segments.paths`)."""
        kernels = self.kernels()
        k_prior, k_segments = jax.random.split(key)
        x0 = kernels.init(k_prior, n)
        x0 = jax.lax.stop_gradient(x0) if detach else x0
        last = jnp.arange(self.segments) == self.segments - 1

        def segment(carry, inputs):
            x, log_w, mcmc_step = carry
            grid, k, is_last = inputs
            k_sim, k_res, k_mcmc = jax.random.split(k, 3)
            p = sdekit.simulate(k_sim, x, grid, kernels.forward, kernels.backward,
                                point=kernels.point, move=kernels.move, detach=detach,
                                stats=_states if keep_paths else None)
            log_G = _segment_log_G(kernels, grid, p.log_ratio, x, p.x)
            new_log_w = log_w + log_G
            resample = ~is_last & (ess(new_log_w) < self.resample_threshold)
            ancestors = systematic(k_res, jax.nn.softmax(new_log_w), n)
            x_next = jax.lax.stop_gradient(jnp.where(resample, p.x[ancestors], p.x))
            log_w_next = jnp.where(resample, log_Z_estimate(new_log_w), new_log_w)
            accept = jnp.nan
            if self.mcmc_steps:
                log_prob = functools.partial(kernels.log_density, grid["beta"][-1])
                x_next, mcmc_step, accept = mala_moves(
                    k_mcmc, log_prob, x_next, mcmc_step, self.mcmc_steps)
            paths = None if p.stats is None else jnp.concatenate([x[:, None], p.stats.swapaxes(0, 1)], 1)
            out = Segments(log_G, jax.nn.log_softmax(log_w), ess(new_log_w), resample, accept, paths)
            return (x_next, log_w_next, mcmc_step), out

        keys = jax.random.split(k_segments, self.segments)
        start = (x0, jnp.zeros(n, x0.dtype), jnp.asarray(self.mcmc_step_size, x0.dtype))
        (x, log_w, _), segments = jax.lax.scan(segment, start, (self._segment_grids(), keys, last))
        return x, log_w, segments

    @eqx.filter_jit
    def _run_jit(self, key: PRNGKeyArray, n: int):
        return self.run(key, n)

    def sample(self, key: PRNGKeyArray, n: int) -> Samples:
        x, log_w, _ = self._run_jit(key, n)
        return Samples(self._positions(x), log_w)

    def target_evaluations(self, n: int) -> int:
        """Evaluations of $\\log\\gamma$ or its gradient: one gradient a state (shared by
        the kernels on either side; each segment starts anew, $K/S + 1$ states), two
        values a segment (its end densities) and one value with gradient a MALA move;
        plus the Gaussian fit's, if any."""
        return n * (self.path.steps + (3 + self.mcmc_steps) * self.segments) + self.fit_evaluations

    def sample_with_stats(self, key: PRNGKeyArray, n: int) -> tuple[Samples, dict[str, Any]]:
        """`sample`, and `{"target_evaluations", "min_ess", "resamplings", "unique_fraction"}`
        (and `"mcmc_acceptance"` with MALA moves): the smallest ESS over the segments before
        any resampling, the number of resamplings, the fraction of distinct returned
        samples. Traceable (`sdekit.run` compiles it)."""
        x, log_w, segments = self._run_jit(key, n)
        x = self._positions(x)
        stats = {
            "target_evaluations": self.target_evaluations(n),
            "min_ess": jnp.min(segments.ess),
            "resamplings": jnp.sum(segments.resampled),
            "unique_fraction": unique_fraction(x),
        }
        if self.mcmc_steps:
            stats["mcmc_acceptance"] = jnp.mean(segments.acceptance)
        return Samples(x, log_w), stats

    @eqx.filter_jit
    def backward_log_weights(self, key: PRNGKeyArray, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        r"""Log-weights of paths started at target samples `x` and run back through all $K$
        backward kernels, without resampling; their mean is the EUBO of the proposal's
        path law (with $S = 1$, of the sampler itself). Underdamped: velocities at the end
        drawn from $\mathcal N(0, m^2)$."""
        kernels = self.kernels()
        k_v, k_path = jax.random.split(key)
        if isinstance(self.path.target, Standardised):
            x = self.path.target.from_target(x)
        p = sdekit.simulate_backward(k_path, kernels.extend(k_v, x), self.path.grid(), kernels.forward,
                                     kernels.backward, point=kernels.point, move_back=kernels.move_back)
        return sdekit.backward_log_weights(p, functools.partial(kernels.log_density, 1.0),
                                           functools.partial(kernels.log_density, 0.0))

    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        kl = self.loss_name == "kl"
        _, log_w, seg = self.run(key, self.batch, detach=not kl)
        loss = -_elbo(seg) if kl else jnp.mean(jnp.var(seg.log_G, axis=1))
        return loss, _stats(seg, log_w)

    def init_loss_state(self) -> Buffer | None:
        """An empty replay buffer of `buffer` batches per segment (`None` without one)."""
        if not self.buffer:
            return None
        length = self.path.steps // self.segments + 1
        dim = self.path.mean.shape[0] * (1 if self.dynamics is None else 2)
        return Buffer.empty(self.segments, self.buffer * self.batch, length, dim)

    def loss_with_state(self, key: PRNGKeyArray, state: Buffer | None):
        """With a buffer (SCLD's training): simulate a batch and store its sub-trajectories;
        per segment, draw half a batch from the buffer (probabilities $\\propto G$, without
        replacement) and take half a batch of the fresh ones; the loss is the mean over
        segments of $\\mathrm{Var}\\log G$ of these, rescored under the current parameters,
        and the drawn entries' priorities are updated."""
        if state is None:
            return AbstractTrainable.loss_with_state(self, key, state)
        k_run, k_draw, k_fresh = jax.random.split(key, 3)
        _, log_w, seg = self.run(k_run, self.batch, detach=True, keep_paths=True)
        state = state.insert(seg.paths, seg.log_G)
        m = self.batch // 2
        index = state.draw(k_draw, m)
        fresh = jax.random.permutation(k_fresh, self.batch)[: self.batch - m]
        log_G = self.rescore(jnp.concatenate([state.take(index), seg.paths[:, fresh]], axis=1))
        state = state.reprioritise(index, jax.lax.stop_gradient(log_G[:, :m]))
        return jnp.mean(jnp.var(log_G, axis=1)), _stats(seg, log_w), state

    def rescore(self, paths: Float[Array, "S n L D"]) -> Float[Array, "S n"]:
        """Each segment's $\\log G$ of given sub-trajectories under the current parameters."""
        kernels = self.kernels()

        def segment(grid, xs):
            xs = jax.lax.stop_gradient(xs).swapaxes(0, 1)
            ratio = sdekit.path_log_ratio(xs, grid, kernels.forward, kernels.backward,
                                          point=kernels.point, move_back=kernels.move_back)
            return _segment_log_G(kernels, grid, ratio, xs[0], xs[-1])

        return jax.vmap(segment)(self._segment_grids(), paths)


def _segment_log_G(kernels, grid, log_ratio, start, end) -> Float[Array, " n"]:
    """A segment's incremental log-weights: its path log-ratio plus the log-densities of
    the path at its end and start levels, $\\log\\pi_b(x_b) - \\log\\pi_a(x_a)$."""
    log_pi = jax.vmap(kernels.log_density, in_axes=(None, 0))
    return log_ratio + log_pi(grid["beta"][-1], end) - log_pi(grid["beta"][0], start)


def _elbo(seg: Segments) -> Scalar:
    return jnp.sum(jnp.exp(jax.lax.stop_gradient(seg.log_W)) * seg.log_G)


def _stats(seg: Segments, log_w: Float[Array, " n"]) -> dict[str, Scalar]:
    return {"elbo": jax.lax.stop_gradient(_elbo(seg)),
            "log_Z": jax.lax.stop_gradient(log_Z_estimate(log_w))}


def _fitted(target: AbstractTarget, fit: str) -> tuple[AbstractTarget, int]:
    """`target` in the coordinates of a Gaussian fitted as `fit` says (with a fixed key:
    the fit is part of the sampler's construction), and the fit's target evaluations;
    without a fit, `target` and 0. A Laplace fit with no proper mode (`sdekit.FitError`)
    falls back to mean-field, with a warning; so does a fit that did not converge warn."""
    method = ("mean-field" if target.log_Z is None else "off") if fit == "auto" else fit
    if method == "off":
        return target, 0
    try:
        gaussian = sdekit.fit_gaussian(target, jax.random.key(0), method=method)
    except sdekit.FitError as e:
        warnings.warn(f"{e}; fitting by mean-field instead", stacklevel=3)
        gaussian = sdekit.fit_gaussian(target, jax.random.key(0), method="mean-field")
    if not bool(gaussian.converged):
        warnings.warn(f"the {gaussian.method} Gaussian fit to {type(target).__name__} did not "
                      f"converge; the sampler runs in its coordinates all the same (fit='off' "
                      f"runs in the target's own)", stacklevel=3)
    return Standardised(target, gaussian.mean, gaussian.scale), int(gaussian.evaluations)


def systematic(key: PRNGKeyArray, weights: Float[Array, " n"], n: int) -> Int[Array, " n"]:
    """blackjax's systematic resampling: `n` ancestor indices for normalised `weights`."""
    # imported here: blackjax computes with JAX when imported, which would start JAX's
    # backend before a multi-process run can be joined (`sdekit.initialize_distributed`)
    from blackjax.smc import resampling

    return resampling.systematic(key, weights, n)


def _states(s, t, x, x_new, log_ratio):
    return x_new


def _check_options(steps, segments, resample_threshold, mcmc_steps, mcmc_step_size,
                   prior_scale, step_size, score_clip, loss, buffer, batch, dynamics, friction,
                   mass, fit) -> None:
    """`ValueError` naming the first bad option."""
    integers = (("steps", steps, 1), ("segments", segments, 1), ("mcmc_steps", mcmc_steps, 0),
                ("buffer", buffer, 0), ("batch", batch, 2))
    for name, value, least in integers:
        if isinstance(value, bool) or not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if steps % segments:
        raise ValueError(f"segments ({segments}) must divide steps ({steps})")
    positive = (("prior_scale", prior_scale), ("step_size", step_size),
                ("mcmc_step_size", mcmc_step_size), ("friction", friction), ("mass", mass))
    for name, value in positive:
        if isinstance(value, (bool, str)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if score_clip is not None and (isinstance(score_clip, (bool, str)) or not score_clip > 0):
        raise ValueError(f"score_clip must be None (off) or a positive number, got {score_clip!r}")
    if isinstance(resample_threshold, (bool, str)) or not 0 <= resample_threshold <= 1:
        raise ValueError(f"resample_threshold must be a number in [0, 1], got {resample_threshold!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if buffer and loss != "log-variance":
        raise ValueError(f"a buffer (buffer={buffer}) trains by loss='log-variance', not {loss!r}; "
                         f"set buffer=0 or loss='log-variance'")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {DYNAMICS}, got {dynamics!r}")


_OPTIONS = inspect.signature(AnnealedSampler).parameters


def _factory(name: str, summary: str, **defaults: Any):
    """`AnnealedSampler` with its own defaults; its signature is what `sdekit show` prints."""

    def factory(target: Spec, **options: Any) -> AnnealedSampler:
        return AnnealedSampler(target, **{**defaults, **options})

    params = [p.replace(default=defaults.get(k, p.default)) for k, p in _OPTIONS.items()]
    factory.__signature__ = inspect.Signature(params, return_annotation=AnnealedSampler)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"""{summary}

    The path: `steps` $K$ Langevin steps from the prior $\\mathcal N(0, \\text{{prior\\_scale}}^2 I)$
    to the target, step sizes starting at `step_size` and decaying (cosine) to 1 % of it;
    `score_clip` clips $\\nabla\\log\\gamma$ in the drift (`None`: off). `segments` $S$ (must
    divide $K$) with resampling when the ESS falls below `resample_threshold`, then
    `mcmc_steps` MALA moves (from `mcmc_step_size`, adapted) after each segment. Training
    (`sdekit.train`): `loss` (`"kl"` or `"log-variance"`), `batch` paths a step,
    `train_iters` Adam steps at peak `learning_rate` (cosine decay), gradient norm clipped to
    `grad_clip` (0: none); `fit`: run in the coordinates of a diagonal Gaussian fitted to
    the target (`"auto"`: by mean-field when its log Z is unknown, as for NumPyro models and
    log-density files; `"mean-field"`, `"laplace"`, `"off"`), the prior and step sizes then
    in its units; `buffer`: a replay buffer of that many batches per segment for
    the log-variance loss (0: off); the control always learns, and `learn_schedule`,
    `learn_step_size`, `learn_prior` say whether $\\beta_k$, $\\varepsilon_k$ and the prior's
    mean and scale do. `dynamics="underdamped"`: position and velocity, an exact
    Ornstein–Uhlenbeck refresh of the velocity (per-coordinate `friction`, learned if
    `learn_friction`) then a leapfrog step of size $\\varepsilon_k$ (`mass` $m$, learned if
    `learn_mass`; velocities $\\sim \\mathcal N(0, m^2)$)."""
    return factory


cmcd = _factory(
    "cmcd",
    "Controlled Monte Carlo diffusion: a learned control along the annealed path, exact weights.",
)
scld = _factory(
    "scld",
    "Sequential controlled Langevin diffusion: CMCD in segments with resampling between them.",
    segments=4,
    loss="log-variance",
    buffer=20,
)
