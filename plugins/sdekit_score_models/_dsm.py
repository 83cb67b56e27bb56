r"""Denoising score matching with an optional Fokker–Planck regulariser, trained by `sdekit.train`."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

import sdekit
from sdekit import AbstractProcess, AbstractTarget, AbstractTrainable, TrainOptions
from sdekit.fokker_planck import DIVERGENCES, log_fp_residual, score_fp_residual

from ._networks import PotentialNet, ScoreNet

__all__ = ["FP_POINTS", "TIME_DISTRIBUTIONS", "WEIGHTINGS", "ScoreMatching", "score_matching",
           "sample_ode", "sample_sde"]

TIME_DISTRIBUTIONS = ("uniform", "beta")
WEIGHTINGS = ("sigma2", "none")
FP_POINTS = ("noised", "box")


class ScoreMatching(AbstractTrainable):
    r"""Denoising score matching for a process with Gaussian transitions, plus a weighted
    Fokker–Planck residual.

    The transition std $\sigma_t$ must be positive on the process's window: for `pbm`
    ($\sigma_t^2 = \sigma^2 t (T - t) / T$, pinned at both ends) that means $t_{\min} > 0$
    (its default is 0); its default $t_{\max} = T(1 - 10^{-6})$ is fine. Under `pbm` build the
    network with `input_scale="marginal"` (see `score_network`).

    With $x_t = a_t x_0 + \sigma_t z$, $x_0$ from the data and $z \sim \mathcal N(0, I)$,
    the loss is
    $\mathbb E_t\,\lambda(t)\,\mathbb E\|s_\theta(t, x_t) + z/\sigma_t\|^2
    + w_{\mathrm{FP}}\,\mathbb E\,\sigma_t^p R^2$,
    with $R$ the log-density residual $R_u$ for a `PotentialNet` and the score residual
    $\|R_s\|$ for a `ScoreNet` (see `sdekit.fokker_planck.log_fp_residual`, `score_fp_residual`), evaluated
    at the first `fp_batch` noised points $(t, x_t)$ of the batch (`fp_points="noised"`)
    or at uniform points of $[t_{\min}, t_{\max}] \times [-b, b]^d$, $b$ = `fp_box`
    (`"box"`). Build it with `score_matching`; the fields are documented there.
    """

    net: ScoreNet | PotentialNet
    process: AbstractProcess
    data: Float[Array, "n d"]
    train_options: TrainOptions
    batch: int = eqx.field(static=True)
    time_distribution: str = eqx.field(static=True)
    weighting: str = eqx.field(static=True)
    fp_weight: float = eqx.field(static=True)
    fp_points: str = eqx.field(static=True)
    fp_box: float = eqx.field(static=True)
    fp_batch: int = eqx.field(static=True)
    fp_sigma_power: float = eqx.field(static=True)
    divergence: str = eqx.field(static=True)

    def trainable(self) -> PyTree[bool]:
        """Only the network is trained (not the data, nor the process)."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.net, spec, jax.tree.map(eqx.is_inexact_array, self.net))

    def sample_times(self, key: PRNGKeyArray, n: int) -> Float[Array, " n"]:
        r"""Uniform on $[t_{\min}, t_{\max}]$, or $t_{\min} + (t_{\max} - t_{\min})\,\mathrm{Beta}(1, 2)$."""
        lo, hi = self.process.t_min, self.process.t_max
        if self.time_distribution == "uniform":
            u = jax.random.uniform(key, (n,))
        else:
            u = jax.random.beta(key, 1.0, 2.0, (n,))
        return lo + (hi - lo) * u

    def losses(self, key: PRNGKeyArray, batch: int) -> dict[str, Scalar]:
        """The DSM loss (`dsm`) and, with `fp_weight > 0`, the mean squared residual (`fp`)."""
        k_data, k_time, k_noise, k_fp = jax.random.split(key, 4)
        x0 = self.data[jax.random.randint(k_data, (batch,), 0, self.data.shape[0])]
        t = self.sample_times(k_time, batch)
        a, sigma = jax.vmap(self.process.marginal)(t)
        z = jax.random.normal(k_noise, x0.shape, x0.dtype)
        xt = a[:, None] * x0 + sigma[:, None] * z
        s = jax.vmap(self.net)(t, xt)
        if self.weighting == "sigma2":
            per_point = jnp.sum((sigma[:, None] * s + z) ** 2, axis=-1)
        else:
            per_point = jnp.sum((s + z / sigma[:, None]) ** 2, axis=-1)
        out = {"dsm": jnp.mean(per_point)}
        if self.fp_weight > 0:
            k_points, k_fp = jax.random.split(k_fp)
            if self.fp_points == "box":
                kt, kx = jax.random.split(k_points)
                t = self.sample_times(kt, self.fp_batch)
                shape = (self.fp_batch, xt.shape[1])
                xt = jax.random.uniform(kx, shape, xt.dtype, -self.fp_box, self.fp_box)
            out["fp"] = self.fp_loss(k_fp, t[: self.fp_batch], xt[: self.fp_batch])
        return out

    def fp_loss(self, key: PRNGKeyArray, t: Float[Array, " m"], xt: Float[Array, "m d"]) -> Scalar:
        """Mean squared Fokker–Planck residual at the collocation points `(t, xt)`
        (Hutchinson probes from `key`)."""
        k_probe = key
        probes = jax.random.rademacher(k_probe, xt.shape, xt.dtype)
        residual = self.residual if self.divergence == "hutchinson" else (
            lambda t, x, _: self.residual(t, x)
        )
        r = jax.vmap(residual)(t, xt, probes)
        squared = r**2 if r.ndim == 1 else jnp.sum(r**2, axis=-1)
        if self.fp_sigma_power:
            squared = squared * jax.vmap(self.process.marginal)(t)[1] ** self.fp_sigma_power
        return jnp.mean(squared)

    def residual(self, t, x: Float[Array, " d"], probe: Float[Array, " d"] | None = None) -> Array:
        """The Fokker–Planck residual of the network at one point (see the class docs)."""
        if isinstance(self.net, PotentialNet):
            return log_fp_residual(self.net.potential, self.process, t, x, probe)[0]
        return score_fp_residual(self.net, self.process, t, x, probe)[0]

    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        parts = self.losses(key, self.batch)
        loss = parts["dsm"] + self.fp_weight * parts.get("fp", 0.0)
        return loss, jax.lax.stop_gradient(parts)


def score_matching(
    data: Float[Array, "n d"] | AbstractTarget,
    net: ScoreNet | PotentialNet,
    *,
    n_data: int = 10_000,
    data_key: PRNGKeyArray | None = None,
    batch: int = 512,
    time_distribution: str = "uniform",
    weighting: str = "sigma2",
    fp_weight: float = 0.0,
    fp_points: str = "noised",
    fp_box: float = 4.0,
    fp_batch: int | None = None,
    fp_sigma_power: float = 0.0,
    divergence: str = "exact",
    steps: int = 2000,
    learning_rate: float = 1e-3,
    warmup: int = 0,
    final_lr_fraction: float = 0.1,
    grad_clip: float | None = 1.0,
    chunk: int = 50,
) -> ScoreMatching:
    r"""A `ScoreMatching` model for `sdekit.train`, learning `net` (its process is the net's).

    **Arguments:**

    - `data`: an `(N, d)` array, or a target with exact samples (then `n_data` of them are
      drawn with `data_key`, default `PRNGKey(0)`).
    - `batch`: data points per step.
    - `time_distribution`: `"uniform"` on $[t_{\min}, t_{\max}]$ of the process, or
      `"beta"`: $t_{\min} + (t_{\max} - t_{\min})\mathrm{Beta}(1, 2)$, denser near the data.
    - `weighting`: $\lambda(t)$, `"sigma2"` ($\sigma_t^2$: the loss is
      $\|\sigma_t s_\theta + z\|^2$) or `"none"` ($\lambda = 1$).
    - `fp_weight`: weight of the Fokker–Planck residual (0: plain DSM); `fp_points`:
      `"noised"` (the batch's $(t, x_t)$) or `"box"` (uniform, half-width `fp_box`);
      `fp_batch`: collocation points per step (default: `batch`); `fp_sigma_power`: $p$,
      each squared residual weighted by $\sigma_t^p$ (0: unweighted; the score residual
      grows like $\sigma_t^{-3}$ as $t \to 0$, so $p = 6$ weighs all times alike);
      `divergence`: `"exact"` or `"hutchinson"` (one Rademacher probe per point).
    - `steps`, `learning_rate`, `warmup`, `final_lr_fraction`, `grad_clip`, `chunk`: the
      `sdekit.TrainOptions` (Adam, cosine decay).
    """
    if isinstance(data, AbstractTarget):
        if not data.has_exact_samples:
            raise ValueError(f"target {type(data).__name__} has no exact samples to learn from")
        data = data.sample(jax.random.PRNGKey(0) if data_key is None else data_key, n_data)
    data = jnp.asarray(data)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"data must be an (N, d) array with N >= 2, got shape {data.shape}")
    sdekit.check_dims(net, data.shape[1], "score network")
    process = net.process
    for t in (process.t_min, process.t_max):
        if not float(process.marginal(t)[1]) > 0:
            raise ValueError(
                f"denoising score matching needs a transition std sigma_t > 0 on [t_min, t_max] "
                f"(its target is -z / sigma_t), but {type(process).__name__} has sigma_t = 0 at t={t}; "
                "give the process a t_min/t_max where it is positive (pbm: t_min > 0, t_max < T)"
            )
    for name, value, allowed in (("time_distribution", time_distribution, TIME_DISTRIBUTIONS),
                                 ("weighting", weighting, WEIGHTINGS),
                                 ("fp_points", fp_points, FP_POINTS),
                                 ("divergence", divergence, DIVERGENCES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    fp_batch = batch if fp_batch is None else fp_batch
    for name, value in (("batch", batch), ("fp_batch", fp_batch)):
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if fp_batch > batch and fp_points == "noised":
        raise ValueError(f"fp_batch={fp_batch} noised points need batch >= fp_batch, got {batch}")
    if not fp_weight >= 0:
        raise ValueError(f"fp_weight must be >= 0, got {fp_weight!r}")
    if not fp_box > 0:
        raise ValueError(f"fp_box must be positive, got {fp_box!r}")
    options = TrainOptions(
        steps=steps, learning_rate=learning_rate, warmup=warmup,
        final_lr_fraction=final_lr_fraction, grad_clip=grad_clip or None, chunk=chunk,
    )
    return ScoreMatching(
        net, net.process, data, options, batch, time_distribution, weighting, float(fp_weight),
        fp_points, float(fp_box), fp_batch, float(fp_sigma_power), divergence,
    )


def _prior(process: AbstractProcess, key: PRNGKeyArray, n: int, dim: int) -> Array:
    return process.prior_sample(key, (n, dim))


def sample_sde(
    score: sdekit.AbstractScore, process: AbstractProcess, key: PRNGKeyArray, n: int, dim: int,
    *, steps: int = 400, spacing: str = "quadratic", solver: str = "euler",
) -> Float[Array, "n d"]:
    """`n` samples of the reverse SDE (the registered `reverse-sde` sampler) driven by `score`."""
    sampler = sdekit.create("sampler", "reverse-sde", process=process, score=score, steps=steps,
                            spacing=spacing, solver=solver)
    k_prior, k_path = jax.random.split(key)
    return sampler.sample_from(k_path, _prior(process, k_prior, n, dim))


def sample_ode(
    score: sdekit.AbstractScore, process: AbstractProcess, key: PRNGKeyArray, n: int, dim: int,
    *, solver: str = "tsit5", steps: int = 4096, rtol: float = 1e-5, atol: float = 1e-5,
) -> Float[Array, "n d"]:
    """`n` samples of the probability-flow ODE (the registered `pf-ode` sampler).

    The prior draws come from `key` exactly as in `sample_sde`, so the two samplers start
    from the same points.
    """
    sampler = sdekit.create("sampler", "pf-ode", process=process, score=score, solver=solver,
                            steps=steps, rtol=rtol, atol=atol, divergence="hutchinson")
    k_prior, k_path = jax.random.split(key)
    return sampler.sample_from(k_path, _prior(process, k_prior, n, dim))
