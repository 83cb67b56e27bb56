r"""A diagonal Gaussian fitted to a target: Laplace at the mode, or mean-field variational.

`sdekit.fit_gaussian(target, key, method=...)` returns a `GaussianFit`
$\mathcal N(\mu, \mathrm{diag}(s)^2)$: a prior and a reference scale for samplers on
targets whose scale nobody knows (NumPyro models, log-density files).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import scipy.stats
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar

from ._compose import Spec, resolve_part
from ._errors import SdekitError, TargetError
from ._process import gaussian_log_prob
from ._target import AbstractTarget

#: The fitting methods `fit_gaussian` knows.
METHODS = ("laplace", "mean-field")


class FitError(SdekitError):
    """A Gaussian fit that has no usable answer (non-finite result, Hessian not positive
    definite at the mode)."""


class GaussianFit(eqx.Module):
    r"""A diagonal Gaussian $\mathcal N(\mu, \mathrm{diag}(s)^2)$ fitted to a target by
    `sdekit.fit_gaussian`.

    **Fields:**

    - `mean`: `(d,)` $\mu$: the mode (`"laplace"`), or the variational mean (`"mean-field"`).
    - `scale`: `(d,)` $s$: $\sqrt{\mathrm{diag}(H^{-1})}$ with $H = -\nabla^2\log\gamma(\mu)$,
      the marginal standard deviations of the Laplace approximation (`"laplace"`); or the
      variational standard deviations (`"mean-field"`).
    - `method`: `"laplace"` or `"mean-field"`.
    - `objective`: the maximised objective at the result: $\log\gamma(\mu)$ (`"laplace"`),
      or the ELBO $\mathbb E_q[\log\gamma - \log q]$ (`"mean-field"`, estimated on fresh draws).
    - `log_Z`: an estimate of $\log Z$: Laplace's
      $\log\gamma(\mu) + \frac d2\log 2\pi - \frac12\log\det H$, or the ELBO (a lower bound).
    - `iterations`: L-BFGS iterations of the chosen start, or Adam steps.
    - `evaluations`: the target's log-density evaluations (with gradient) the fit took, all
      starts and runs together; a Hessian counts as `d`.
    - `grad_norm`: the norm of the objective's gradient at the result (for `"mean-field"`
      a Monte-Carlo estimate over `(mean, log scale)`).
    - `converged`: `"laplace"`: the Newton decrement $\sqrt{g^\top H^{-1} g}$ (the distance
      from $\mu$ to the mode of the local quadratic, in Laplace standard deviations) is at
      most `tol`; `"mean-field"`: the estimated gradient is within its Monte-Carlo noise (a
      chi-square test at level 0.001 over the `2d` parameters).
    """

    mean: Float[Array, " d"]
    scale: Float[Array, " d"]
    method: str = eqx.field(static=True)
    objective: Scalar
    log_Z: Scalar
    iterations: Int[Array, ""]
    evaluations: Int[Array, ""]
    grad_norm: Scalar
    converged: Bool[Array, ""]

    def log_prob(self, x: Float[Array, " d"]) -> Scalar:
        """The normalised log-density of the Gaussian at one point."""
        return gaussian_log_prob(x, self.mean, self.scale)

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """`n` draws from the Gaussian."""
        return self.mean + self.scale * jax.random.normal(key, (n, self.mean.shape[0]))


# --------------------------------------------------------------------------------------
# Laplace


def _lbfgs(neg_log_prob, x0: Float[Array, " d"], max_iters: Int[Array, ""]):
    """Minimise `neg_log_prob` from `x0` by L-BFGS with a zoom line search (optax), until an
    iteration changes the value by at most a few rounding errors, or `max_iters`
    iterations; `(x, value, count, evaluations)`: the evaluations of `neg_log_prob` (with
    its gradient): one at `x0`, the line searches', one at the end."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(neg_log_prob)
    ftol = 4 * jnp.finfo(x0.dtype).eps

    def step(carry):
        x, state, _, evaluations = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad,
                                    value_fn=neg_log_prob)
        evaluations = evaluations + otu.tree_get(state, "num_linesearch_steps")
        return optax.apply_updates(x, updates), state, value, evaluations

    def unfinished(carry):
        _, state, previous, _ = carry
        count, value = otu.tree_get(state, "count"), otu.tree_get(state, "value")
        stalled = jnp.abs(previous - value) <= ftol * jnp.maximum(1.0, jnp.abs(value))
        return (count == 0) | ((count < max_iters) & ~stalled & jnp.isfinite(value))

    init = (x0, opt.init(x0), jnp.asarray(jnp.inf, x0.dtype), jnp.asarray(1))
    x, state, _, evaluations = jax.lax.while_loop(unfinished, step, init)
    return x, neg_log_prob(x), otu.tree_get(state, "count"), evaluations + 1


def _laplace(target: AbstractTarget, starts: Float[Array, "m d"], max_iters: Int[Array, ""],
             tol: Scalar) -> tuple[GaussianFit, Scalar]:
    """L-BFGS from each start; the Laplace fit at the best end point, and the smallest
    eigenvalue of the Hessian of minus the log-density there (`nan` if not finite)."""

    def neg_log_prob(x):
        return -target.log_prob(x)

    xs, values, counts, evaluations = jax.vmap(lambda x0: _lbfgs(neg_log_prob, x0, max_iters))(
        starts
    )
    best = jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))
    mode, value = xs[best], -values[best]
    grad = jax.grad(neg_log_prob)(mode)
    precision = jax.hessian(neg_log_prob)(mode)
    precision = 0.5 * (precision + precision.T)
    chol = jnp.linalg.cholesky(precision)
    finite = jnp.all(jnp.isfinite(precision))
    smallest = jnp.where(finite, jnp.linalg.eigvalsh(jnp.where(finite, precision, 0.0))[0],
                         jnp.nan)
    # diag(H^{-1}) = column sums of squares of L^{-1}, where H = L L^T
    chol_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(mode.shape[0]), lower=True)
    scale = jnp.sqrt(jnp.sum(chol_inv**2, axis=0))
    # Newton decrement: the distance to the local quadratic's mode in Laplace sds
    decrement = jnp.linalg.norm(chol_inv @ grad)
    log_Z = value + 0.5 * mode.shape[0] * jnp.log(2 * jnp.pi) - jnp.sum(jnp.log(jnp.diag(chol)))
    evaluations = jnp.sum(evaluations) + 1 + mode.shape[0]  # + the gradient and Hessian
    fit = GaussianFit(mode, scale, "laplace", value, log_Z, counts[best], evaluations,
                      jnp.linalg.norm(grad), decrement <= tol)
    return fit, smallest


_laplace_jit = eqx.filter_jit(_laplace)


# --------------------------------------------------------------------------------------
# mean-field


def _elbo_terms(log_prob, mean, log_scale, eps: Float[Array, "n d"]) -> Float[Array, " n"]:
    r"""Per-draw ELBO terms $\log\gamma(\mu + s\varepsilon) - \log q(\mu + s\varepsilon)$."""
    x = mean + jnp.exp(log_scale) * eps
    log_q = jax.vmap(lambda z: gaussian_log_prob(z, mean, jnp.exp(log_scale)))(x)
    return jax.vmap(log_prob)(x) - log_q


def _mean_field_steps(target: AbstractTarget, key: PRNGKeyArray, mean0: Float[Array, " d"],
                      scale0: Float[Array, " d"], steps: int, batch: int,
                      learning_rate: Scalar) -> tuple[Array, Array]:
    """`steps` Adam steps on minus the ELBO, reparameterised gradients from `batch` draws,
    the learning rate cosine-decayed to zero; `(mean, log scale)`. The parameters are
    `mean0 + scale0 * u` and `log(scale0) + v`: Adam moves `(u, v)`, in units of `scale0`."""
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def natural(p):
        return mean0 + scale0 * p[0], jnp.log(scale0) + p[1]

    def loss(p, eps):
        return -jnp.mean(_elbo_terms(target.log_prob, *natural(p), eps))

    def step(carry, k):
        p, state = carry
        eps = jax.random.normal(k, (batch, mean0.shape[0]), mean0.dtype)
        grad = jax.grad(loss)(p, eps)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), None

    params = (jnp.zeros_like(mean0), jnp.zeros_like(mean0))
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return natural(params)


def _mean_field_starts(target: AbstractTarget, starts: Float[Array, "m d"],
                       laplace_options: tuple[Array, Scalar]) -> tuple[Array, Array, Array]:
    """`(means, scales)`, `(2, d)`: the Laplace fit where it exists (else the first start
    and unit scales again), and the first start with unit scales; and the Laplace fit's
    evaluations."""
    laplace, smallest = _laplace(target, starts, *laplace_options)
    usable = (smallest > 0) & jnp.all(jnp.isfinite(laplace.mean) & jnp.isfinite(laplace.scale)
                                      & (laplace.scale > 0))
    ones = jnp.ones_like(starts[0])
    means = jnp.stack([jnp.where(usable, laplace.mean, starts[0]), starts[0]])
    scales = jnp.stack([jnp.where(usable, laplace.scale, ones), ones])
    return means, scales, laplace.evaluations


@eqx.filter_jit
def _mean_field(target: AbstractTarget, key: PRNGKeyArray, starts: Float[Array, "m d"],
                laplace_options: tuple[Array, Scalar], steps: int, batch: int,
                learning_rate: Scalar, eval_draws: int, threshold: Scalar) -> GaussianFit:
    """Mean-field fits from the Laplace fit and from `starts[0]` with unit scales; the one
    with the higher ELBO on `eval_draws` fresh draws, and its gradient test."""
    k_fit, k_eval = jax.random.split(key)
    means0, scales0, evaluations = _mean_field_starts(target, starts, laplace_options)
    means, log_scales = jax.vmap(
        lambda m, s: _mean_field_steps(target, k_fit, m, s, steps, batch, learning_rate)
    )(means0, scales0)
    eps = jax.random.normal(k_eval, (eval_draws, means.shape[1]), means.dtype)

    def per_draw(p, e):
        return _elbo_terms(target.log_prob, p[0], p[1], e[None])[0]

    def terms_and_grads(mean, log_scale):
        return jax.vmap(jax.value_and_grad(per_draw), in_axes=(None, 0))((mean, log_scale), eps)

    terms, grads = jax.vmap(terms_and_grads)(means, log_scales)
    elbos = jnp.mean(terms, axis=1)
    best = jnp.argmax(jnp.where(jnp.isnan(elbos), -jnp.inf, elbos))
    g = jnp.concatenate([grads[0][best], grads[1][best]], axis=1)  # (eval_draws, 2d)
    g_mean, g_se = jnp.mean(g, axis=0), jnp.std(g, axis=0) / jnp.sqrt(eval_draws)
    statistic = jnp.sum((g_mean / jnp.where(g_se > 0, g_se, 1.0)) ** 2)
    evaluations = evaluations + 2 * (steps * batch + eval_draws)
    return GaussianFit(means[best], jnp.exp(log_scales[best]), "mean-field", elbos[best],
                       elbos[best], jnp.asarray(steps), evaluations, jnp.linalg.norm(g_mean),
                       statistic <= threshold)


# --------------------------------------------------------------------------------------
# the public function


def _check_key(key: Any) -> None:
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return
    raise TypeError(
        f"key must be one PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), got "
        f"{type(key).__name__} {key!r}"
    )


def _check_options(method: Any, positive: dict[str, Any], **counts: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            0 < value < np.inf
        ):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


@eqx.filter_jit
def _value_and_grad(target: AbstractTarget, x: Float[Array, " d"]) -> tuple[Scalar, Array]:
    return jax.value_and_grad(target.log_prob)(x)


def _start(target: AbstractTarget, init: Any) -> Float[Array, " d"]:
    """`init` (default the origin) as a point, checked: the log-density and its gradient
    must be finite there."""
    dtype = jnp.zeros(()).dtype
    x = jnp.zeros(target.dim, dtype) if init is None else jnp.asarray(init, dtype)
    if x.shape != (target.dim,):
        raise ValueError(f"init must have shape ({target.dim},), got shape {x.shape}: {init!r}")
    value, grad = _value_and_grad(target, x)
    if not (np.isfinite(value) and np.all(np.isfinite(grad))):
        what = f"log_prob is {float(value)}" if not np.isfinite(value) else (
            f"the gradient of log_prob is {np.asarray(grad)}")
        raise TargetError(
            f"{type(target).__name__}: {what} at the starting point {np.asarray(x)}; a fit "
            f"starts where the log-density and its gradient are finite: give init=... inside "
            f"the support"
        )
    return x


def fit_gaussian(
    target: Spec,
    key: PRNGKeyArray,
    *,
    method: str = "mean-field",
    init: Float[Array, " d"] | None = None,
    steps: int = 2000,
    batch: int = 64,
    learning_rate: float = 0.05,
    eval_draws: int = 1024,
    starts: int = 4,
    max_iters: int = 500,
    tol: float = 1e-2,
) -> GaussianFit:
    r"""A diagonal Gaussian $\mathcal N(\mu, \mathrm{diag}(s)^2)$ fitted to `target`.

    - `method="mean-field"` (the default): maximises the ELBO of
      $q = \mathcal N(\mu, \mathrm{diag}(s)^2)$ over $(\mu, \log s)$ by `steps` Adam steps
      (learning rate `learning_rate`, cosine-decayed to zero) on reparameterised gradients
      from `batch` draws, twice: from the Laplace fit (where it exists) and from `init`
      with unit scales; the fit with the higher ELBO on `eval_draws` fresh draws is kept,
      and they test its convergence. Each run's steps are taken in units of its starting
      scale, so a posterior far from the origin or from unit scale (a mean of 1000, sds of
      0.07) is fitted as well as a standardised one; the start from `init` keeps the fit
      out of a spurious mode such as a funnel's neck. On a Gaussian target $\mu$ is its
      mean and $s_i^2 = 1/P_{ii}$ ($P$ the precision): the *conditional* variances, smaller
      than the marginal ones when coordinates are correlated.
    - `method="laplace"`: the mode $\mu$ of $\log\gamma$ by L-BFGS with a zoom line search
      (optax), from `init` and `starts - 1` points `init` + standard-normal draws (at most
      `max_iters` iterations each, until the value stops changing), keeping the highest
      end point; $s = \sqrt{\mathrm{diag}(H^{-1})}$ with $H = -\nabla^2\log\gamma(\mu)$,
      the Laplace approximation's *marginal* standard deviations ($1/\sqrt{H_{ii}}$, the
      conditional ones, would miss mass as a prior). `converged` when the Newton
      decrement is at most `tol`. Costs a full Hessian ($d$ gradient evaluations).

    Mean-field is the default because it is the robust one on posteriors
    (`benchmarks/gaussian_fit.py`): its mean is within 0.05 posterior sd of NUTS on eight
    schools (non-centred) where the mode is 2.2 sd off, it has an answer on the centred
    model and the funnel, which have no proper mode; Laplace is the better fit of
    near-Gaussian posteriors (logistic regression: sds within 6 % where mean-field's are
    0.43-0.71 of the posterior's).

    `target`: an `AbstractTarget` or a spec (`"funnel"`, `"numpyro:model.py:model"`);
    `key`: a PRNG key; `init`: the starting point (default the origin), where the
    log-density and its gradient must be finite. Everything numerical is one compiled call.

    Raises `FitError` when the result is not finite, or (Laplace) when the Hessian at the
    highest point found is not positive definite (no proper mode, e.g. a density that
    grows without bound in a funnel's neck). A fit that did not converge is returned with
    `converged=False`.

    ```python
    fit = sdekit.fit_gaussian("numpyro:examples/eight_schools.py:noncentered",
                              jax.random.key(0))
    fit.mean, fit.scale, fit.converged
    ```
    """
    _check_options(method, {"learning_rate": learning_rate, "tol": tol}, starts=starts,
                   max_iters=max_iters, steps=steps, batch=batch, eval_draws=eval_draws)
    _check_key(key)
    target = resolve_part("target", target)
    x0 = _start(target, init)
    noise = jax.random.normal(jax.random.fold_in(key, 1), (starts - 1, target.dim), x0.dtype)
    points = jnp.concatenate([x0[None], x0 + noise])
    laplace_options = (jnp.asarray(max_iters), jnp.asarray(tol, x0.dtype))
    if method == "laplace":
        fit, smallest = _laplace_jit(target, points, *laplace_options)
        _check_hessian(target, fit, float(smallest))
    else:
        threshold = jnp.asarray(scipy.stats.chi2.ppf(0.999, 2 * target.dim), x0.dtype)
        fit = _mean_field(target, key, points, laplace_options, steps, batch,
                          jnp.asarray(learning_rate, x0.dtype), eval_draws, threshold)
    _check_finite(target, fit)
    return fit


def _check_hessian(target: AbstractTarget, fit: GaussianFit, smallest: float) -> None:
    if smallest > 0:
        return
    what = ("has non-finite entries" if np.isnan(smallest)
            else f"is not positive definite (smallest eigenvalue {smallest:.4g})")
    raise FitError(
        f"{type(target).__name__}: the Hessian of -log_prob at the highest point L-BFGS "
        f"found, x = {np.asarray(fit.mean)} (log_prob {float(fit.objective):.6g}, after "
        f"{int(fit.iterations)} iterations), {what}: the Laplace approximation does not "
        f"exist there (no proper mode: a flat direction, a saddle, or a density that grows "
        f"without bound, as in a funnel's neck); use method='mean-field'"
    )


def _check_finite(target: AbstractTarget, fit: GaussianFit) -> None:
    for name in ("mean", "scale", "objective"):
        value = np.asarray(getattr(fit, name))
        if not np.all(np.isfinite(value)):
            raise FitError(
                f"{type(target).__name__}: the {fit.method} fit's {name} is not finite: "
                f"{value} (after {int(fit.iterations)} iterations); check the log-density "
                f"where it grows without bound, or try the other method"
            )
