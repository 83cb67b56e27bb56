r"""Conformance checks for plugin authors: run them in your own pytest.

```python
import sdekit.testing

def test_my_process():
    sdekit.testing.check_process(MyProcess(rate=2.0))

def test_my_target():
    sdekit.testing.check_target("my-target")   # a registered name works too
```

Each check takes an instance (or a registered name, built with `sdekit.create`), runs in
seconds on a CPU, and raises `ConformanceError` (an `AssertionError`, so pytest reports
it as a failed assertion) whose message names the part, the property that failed, by how
much, and the tolerance. On success it returns the measured quantities, a `dict`.

**Tolerances.** Two kinds, both documented where they are used:

- *exact identities* (Chapman–Kolmogorov, drift versus transition, `score == grad
  potential`) hold up to floating-point rounding: the tolerance is `EXACT_ULPS` units in
  the last place of the default float type (`1000 * eps`, about `1.2e-4` in float32);
- *statistical* properties (exact samples against `log_prob`, `log_Z`, a sampler's
  log-weights) are estimates from `n` draws with a fixed `key`: the tolerance is `K_SE`
  standard errors, each standard error estimated from the same draws, so a correct part
  fails with probability below about `1e-6` per property, and the tolerance shrinks like
  $1/\sqrt n$.
"""

import math
from collections.abc import Callable
from typing import Any, NoReturn

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._compose import compose, create, resolve_part
from ._diagnostic import AbstractDiagnostic
from ._errors import TargetError
from ._mixture import GaussianMixture
from ._process import AbstractProcess, time_grid
from ._sampler import (
    AbstractDiffusionSampler,
    AbstractPathSampler,
    AbstractSampler,
    Samples,
    log_Z_estimate,
)
from ._score import AbstractDensityScore, AbstractPotentialScore, AbstractScore
from ._target import AbstractTarget
from ._target import check_target as _check_log_prob

__all__ = [
    "EXACT_ULPS",
    "K_SE",
    "ConformanceError",
    "check_diagnostic",
    "check_process",
    "check_sampler",
    "check_score",
    "check_target",
]

EXACT_ULPS = 1000
"""Exact identities hold to this many units in the last place of the default float type."""
K_SE = 5.0
"""Statistical properties hold to this many estimated standard errors."""


class ConformanceError(AssertionError):
    """A part violates its interface's contract; the message says which property
    failed, by how much, and against what tolerance."""


def _fail(what: str, prop: str, detail: str) -> NoReturn:
    raise ConformanceError(f"{what}: {prop}: {detail}")


def _exact_rtol() -> float:
    return EXACT_ULPS * float(jnp.finfo(jnp.zeros(()).dtype).eps)


def _key(key: PRNGKeyArray | None) -> PRNGKeyArray:
    return jax.random.PRNGKey(0) if key is None else key


def _build(kind: str, part: Any, **parts: Any) -> Any:
    """An instance from a registered name or `{"name": ...}` dict; objects pass through."""
    if isinstance(part, (str, dict)):
        return resolve_part(kind, part, **{k: v for k, v in parts.items() if v is not None})
    return part


def _worst(errors: np.ndarray, labels: list[str]) -> tuple[float, str]:
    i = int(np.nanargmax(np.where(np.isnan(errors), np.inf, errors)))
    return float(errors.flat[i]), labels[i]


def _check_errors(what: str, prop: str, errors, labels: list[str], tol: float, unit: str) -> float:
    """Fail with the worst entry unless every error is finite and within `tol`."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    worst, where = _worst(errors, labels)
    if not worst <= tol:
        _fail(what, prop, f"{unit} {worst:.3g} at {where}; tolerance {tol:.3g}")
    return worst


# ---------------------------------------------------------------------------- process

#: Fractions of the window [t_min, t_max] at which transitions are composed.
_FRACTIONS = (0.0, 0.1, 0.45, 0.7, 0.93, 1.0)
#: Short intervals, as fractions of the window, at both ends of it: a fine grid's first
#: and last steps (cosine spacing with K steps has steps of about 2.5 / K^2).
_SHORT = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
_GL8 = np.polynomial.legendre.leggauss(8)
_GL4 = np.polynomial.legendre.leggauss(4)


def _linear_coefficient(process: AbstractProcess, t, d: int):
    """`c(t)` with `f(t, y) = c(t) y`, and the drift's deviation from that form."""
    y = jnp.linspace(-1.5, 2.0, d)
    c = jnp.vdot(process.drift(t, y), y) / jnp.vdot(y, y)
    z = jnp.cos(jnp.arange(d) + 0.3)
    fz = process.drift(t, z)
    # Relative to |c z|; a zero drift (c = 0) is linear, with deviation 0.
    return c, jnp.linalg.norm(fz - c * z) / (jnp.linalg.norm(z) * (jnp.abs(c) + 1e-30))


def _quadrature(process: AbstractProcess, s, t, rule) -> tuple[Array, Array]:
    r"""$\int_s^t a_{u,t}^2 g(u)^2 du$ and $\int_s^t c(u) du$ by Gauss–Legendre."""
    nodes, weights = (jnp.asarray(v) for v in rule)
    u = jnp.clip(s + (t - s) * (nodes + 1) / 2, s, t)
    a = jax.vmap(lambda v: process.transition(v, t)[0])(u)
    g = jax.vmap(process.diffusion)(u)
    c = jax.vmap(lambda v: _linear_coefficient(process, v, 1)[0])(u)
    half = (t - s) / 2
    return half * jnp.sum(weights * a**2 * g**2), half * jnp.sum(weights * c)


def _derivatives(process: AbstractProcess, s, t):
    """`(a, sigma)` of `transition(s, t)` and their `t`-derivatives (forward mode)."""
    (a, sig), (da, dsig) = jax.jvp(lambda v: process.transition(s, v), (t,), (jnp.ones_like(t),))
    return a, sig, da, dsig


@eqx.filter_jit
def _process_values(process: AbstractProcess, times, pairs, short, d: int) -> dict[str, Array]:
    """Everything `check_process` compares, in one compiled call: transitions between all
    `times`, derivatives at the `pairs` `(s, t)`, and the `short` intervals."""
    a, sig = jax.vmap(jax.vmap(process.transition, (None, 0)), (0, None))(times, times)
    coef = jax.vmap(lambda t: _linear_coefficient(process, t, d))(times)
    s, t = pairs
    c_t = jax.vmap(lambda u: _linear_coefficient(process, u, d)[0])(t)
    transition_sum = jax.grad(lambda s, t: sum(process.transition(s, t)), argnums=(0, 1))
    return {
        "a": a, "sig": sig, "r": jax.vmap(process.reference_std)(times),
        "c": coef[0], "nonlinear": coef[1], "g": jax.vmap(process.diffusion)(times),
        "deriv": jax.vmap(lambda s, t: _derivatives(process, s, t))(s, t),
        "rates": (c_t, jax.vmap(process.diffusion)(t), jax.vmap(process.reference_std)(t)),
        "grad": jax.vmap(transition_sum)(s, t),
        "short": jax.vmap(process.transition)(*short),
        "gl8": jax.vmap(lambda s, t: _quadrature(process, s, t, _GL8))(*short),
        "gl4": jax.vmap(lambda s, t: _quadrature(process, s, t, _GL4))(*short),
    }


def _check_members(what: str, process: Any) -> tuple[float, float, float]:
    if not isinstance(process, AbstractProcess):
        _fail(what, "interface", f"expected an sdekit.AbstractProcess, got {type(process).__name__}")
    values = {}
    for name in ("T", "t_min", "t_max"):
        value = getattr(process, name)
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            _fail(what, f"member {name}", f"expected a real number, got {value!r}")
        if not math.isfinite(values[name]):
            _fail(what, f"member {name}", f"expected a finite number, got {value!r}")
    T, t_min, t_max = values["T"], values["t_min"], values["t_max"]
    if not 0 <= t_min < t_max <= T:
        _fail(what, "time window", f"need 0 <= t_min < t_max <= T, got {t_min}, {t_max}, {T}")
    try:
        time_grid(process, 4)
    except ValueError as e:
        _fail(what, "default_spacing", str(e))
    return T, t_min, t_max


def _check_shapes(what: str, process: AbstractProcess, t: float, dim: int) -> None:
    """Output shapes for one point: drift `(d,)`, the others scalars."""
    t = jnp.asarray(t, float)
    calls = {
        "drift(t, y)": (lambda: process.drift(t, jnp.ones(dim)), [(dim,)]),
        "diffusion(t)": (lambda: process.diffusion(t), [()]),
        "transition(s, t)": (lambda: process.transition(t, t), [(), ()]),
        "reference_std(t)": (lambda: process.reference_std(t), [()]),
    }
    for name, (call, expected) in calls.items():
        try:
            out = jax.eval_shape(call)
        except Exception as e:  # noqa: BLE001 - any failure is the process failing
            _fail(what, name, f"fails on one point of shape ({dim},): {type(e).__name__}: {e}")
        if len(expected) == 2 and not (isinstance(out, tuple) and len(out) == 2):
            _fail(what, name, f"returned {out}; expected a tuple (a, sigma) of two scalars")
        shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(out)]
        if shapes != expected:
            _fail(what, name, f"returned shapes {shapes}; expected {expected} (scalars are shape ())")


def _short_intervals(t_min: float, t_max: float) -> tuple[Array, Array, list[str]]:
    """Short `(s, t)` at both ends of the window, rounded to the default float type."""
    lo, hi = jnp.asarray(t_min, float), jnp.asarray(t_max, float)
    h = jnp.asarray(_SHORT, float) * (hi - lo)
    s = jnp.concatenate([jnp.full_like(h, lo), hi - h])
    t = jnp.concatenate([lo + h, jnp.full_like(h, hi)])
    labels = [f"(s, t) = ({float(a):.8g}, {float(b):.8g})" for a, b in zip(s, t)]
    return s, t, labels


def _check_finite(what: str, values: dict[str, Any]) -> None:
    for name, value in values.items():
        for i, leaf in enumerate(jax.tree_util.tree_leaves(value)):
            leaf = np.asarray(leaf)
            if not np.all(np.isfinite(leaf)):
                _fail(what, "finite values under jit, vmap and grad",
                      f"{name} (output {i}) has non-finite entries: {leaf.ravel()[:8]}")


def check_process(process: AbstractProcess | str, *, dim: int = 3) -> dict[str, float]:
    r"""Check a forward process against the `AbstractProcess` contract.

    - `T`, `t_min`, `t_max` are finite with `0 <= t_min < t_max <= T`; `default_spacing`
      is a known spacing; for one point `drift` returns shape `(dim,)`, `transition` a
      tuple of two scalars, `diffusion` and `reference_std` scalars; all give finite
      values (and `transition` finite gradients) under `jit`, `vmap` and `grad`.
    - The drift is linear, $f(t, y) = c(t) y$ (Gaussian transitions need it), and
      `transition(s, s) = (1, 0)`.
    - Chapman–Kolmogorov over the times `t_min + (t_max - t_min) * (0, .1, .45, .7, .93, 1)`:
      $a_{su} = a_{st} a_{tu}$ and $\sigma_{su}^2 = a_{tu}^2 \sigma_{st}^2 + \sigma_{tu}^2$.
    - The reference marginal: $r_t^2 = a_{st}^2 r_s^2 + \sigma_{st}^2$.
    - Drift versus transition, exactly (forward-mode derivatives in `t`):
      $\partial_t a_{st} = c(t) a_{st}$ and $\partial_t \sigma_{st}^2 = 2 c(t) \sigma_{st}^2 + g(t)^2$.
    - Short intervals at both ends of the window (`1e-2` down to `1e-7` of it):
      $\sigma_{st}^2$ against $\int_s^t a_{ut}^2 g(u)^2 du$ by Gauss–Legendre quadrature
      (intervals on which 4 and 8 nodes disagree are too long to judge and skipped). A
      transition that loses digits to cancellation (`1 - exp(-x)` instead of
      `-expm1(-x)`, or `B(t) - B(s)` of a large integral) fails here.
    - The prior: `prior_sample` and `prior_log_prob` agree (as for a target with exact
      samples, see `check_target`) and the prior is normalised.

    Exact identities hold to `EXACT_ULPS` ulps, relative to the quantity's own scale.
    """
    process = _build("process", process)
    what = f"process {type(process).__name__}"
    _, t_min, t_max = _check_members(what, process)
    _check_shapes(what, process, 0.5 * (t_min + t_max), dim)
    times = t_min + (t_max - t_min) * jnp.asarray(_FRACTIONS, float)
    times = times.at[0].set(t_min).at[-1].set(t_max)
    short_s, short_t, short_labels = _short_intervals(t_min, t_max)
    pairs, pair_labels = _upper_pairs(times)
    ii, jj = np.array(pairs).T
    v = _process_values(process, times, (times[ii], times[jj]), (short_s, short_t), dim)
    _check_finite(what, {k: v[k] for k in ("r", "c", "g", "deriv", "rates", "grad")})
    tol = _exact_rtol()
    out = {"linearity": _check_errors(
        what, "drift linear in y (f(t, y) = c(t) y)", v["nonlinear"],
        [f"t = {float(t):.6g}" for t in times], tol, "relative deviation")}
    out.update(_check_composition(what, v, times, tol))
    out.update(_check_rates(what, v, pair_labels, tol))
    out.update(_check_short(what, v, short_labels, tol))
    out.update(_check_prior(what, process, dim))
    return out


def _upper_pairs(times) -> tuple[list[tuple[int, int]], list[str]]:
    n = len(times)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return pairs, [f"(s, t) = ({float(times[i]):.6g}, {float(times[j]):.6g})" for i, j in pairs]


def _check_composition(what: str, v: dict, times, tol: float) -> dict[str, float]:
    a, sig, r = (np.asarray(v[k], np.float64) for k in ("a", "sig", "r"))
    diag = np.abs(np.diagonal(a) - 1) + np.abs(np.diagonal(sig))
    _check_errors(what, "transition(s, s) == (1, 0)", diag,
                  [f"s = {float(t):.6g}" for t in times], tol, "deviation")
    pairs, labels = _upper_pairs(times)
    ii, jj = np.array(pairs).T
    if not (np.all(a[ii, jj] > 0) and np.all(sig[ii, jj] > 0)):
        _fail(what, "transition(s, t) for s < t", "expected a > 0 and sigma > 0, got "
              f"a = {a[ii, jj]}, sigma = {sig[ii, jj]} at {labels}")
    var = sig**2
    err_r = np.abs(r[jj] ** 2 - (a[ii, jj] ** 2 * r[ii] ** 2 + var[ii, jj])) / r[jj] ** 2
    out = {"reference": _check_errors(
        what, "reference marginal r_t^2 = a_st^2 r_s^2 + sigma_st^2", err_r, labels, tol,
        "relative error")}
    triples = [(i, j, k) for i, j in pairs for k in range(j + 1, len(times))]
    i, j, k = np.array(triples).T
    tl = [f"(s, t, u) = ({float(times[x]):.6g}, {float(times[y]):.6g}, {float(times[z]):.6g})"
          for x, y, z in triples]
    err_a = np.abs(a[i, k] - a[i, j] * a[j, k]) / a[i, k]
    out["chapman_kolmogorov_a"] = _check_errors(
        what, "Chapman-Kolmogorov a_su = a_st a_tu", err_a, tl, tol, "relative error")
    err_v = np.abs(var[i, k] - (a[j, k] ** 2 * var[i, j] + var[j, k])) / var[i, k]
    out["chapman_kolmogorov_var"] = _check_errors(
        what, "Chapman-Kolmogorov sigma_su^2 = a_tu^2 sigma_st^2 + sigma_tu^2", err_v, tl, tol,
        "relative error")
    return out


def _check_rates(what: str, v: dict, labels: list[str], tol: float) -> dict[str, float]:
    """The `t`-derivatives of the transition against the drift and diffusion."""
    a, sig, da, dsig = (np.asarray(x, np.float64) for x in v["deriv"])
    c, g, r = (np.asarray(x, np.float64) for x in v["rates"])
    # The natural rate at t, |c| + g^2 / r^2: how fast the law changes there.
    rate = np.abs(c) + g**2 / np.maximum(r**2, np.finfo(np.float32).tiny)
    err_a = np.abs(da - c * a) / (a * rate)
    lhs, rhs = 2 * sig * dsig, 2 * c * sig**2 + g**2
    err_v = np.abs(lhs - rhs) / np.maximum(np.abs(2 * c * sig**2) + g**2, 1e-30)
    return {
        "drift_vs_transition_a": _check_errors(
            what, "d/dt a_st = c(t) a_st (transition against drift)", err_a, labels, tol,
            "relative error"),
        "drift_vs_transition_var": _check_errors(
            what, "d/dt sigma_st^2 = 2 c(t) sigma_st^2 + g(t)^2 (transition against drift and "
            "diffusion)", err_v, labels, tol, "relative error"),
    }


def _check_short(what: str, v: dict, labels: list[str], tol: float) -> dict[str, float]:
    """Short intervals: the transition's variance against the quadrature of g^2."""
    a, sig = (np.asarray(x, np.float64) for x in v["short"])
    q8, c8 = (np.asarray(x, np.float64) for x in v["gl8"])
    q4, _ = (np.asarray(x, np.float64) for x in v["gl4"])
    judged = (np.abs(q8 - q4) <= 0.1 * tol * np.abs(q8)) & (q8 > 0)
    if not judged.any():
        return {}
    keep = [lab for lab, j in zip(labels, judged) if j]
    err_v = np.abs(sig[judged] ** 2 - q8[judged]) / q8[judged]
    err_a = np.abs(np.log(a[judged]) - c8[judged]) / np.maximum(np.abs(c8[judged]), 1.0)
    return {
        "short_interval_var": _check_errors(
            what, "sigma_st^2 = integral of a_ut^2 g(u)^2 over a short interval (cancellation "
            "in transition?)", err_v, keep, tol, "relative error"),
        "short_interval_a": _check_errors(
            what, "log a_st = integral of c(u) over a short interval", err_a, keep, tol,
            "error"),
    }


def _check_prior(what: str, process: AbstractProcess, dim: int) -> dict[str, float]:
    draw = eqx.filter_jit(lambda process, key, n: process.prior_sample(key, (n, dim)))

    def sample(key, n):
        return draw(process, key, n)

    out = _check_exact_samples(f"{what} prior", sample, process.prior_log_prob, dim, 4000, None)
    out.update(_check_log_Z(f"{what} prior", sample, process.prior_log_prob, dim, 0.0, 4000, None))
    return {f"prior_{k}": x for k, x in out.items()}


# ----------------------------------------------------------------------------- target


def _stein(log_prob: Callable, x: Float[Array, "n d"]) -> tuple[Array, Array]:
    r"""Two Stein statistics, zero-mean under the normalised density of `log_prob`:
    $x \cdot \nabla\log p(x) + d$ and $u \cdot \nabla\log p(x)$ for a fixed direction $u$."""
    grads = jax.vmap(jax.grad(log_prob))(x)
    d = x.shape[-1]
    u = jnp.cos(jnp.arange(d) * 1.7 + 0.4)
    return jnp.sum(x * grads, -1) + d, grads @ (u / jnp.linalg.norm(u))


def _mean_within(what: str, prop: str, values: np.ndarray, expected: float, k: float) -> float:
    """`|mean - expected| <= k SE`; returns the deviation in standard errors."""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(values.size)
    dev = abs(values.mean() - expected)
    z = dev / se if se > 0 else (0.0 if dev == 0 else math.inf)
    if not z <= k:
        _fail(what, prop, f"mean {values.mean():.5g}, expected {expected:.5g}: off by {dev:.3g} "
              f"= {z:.2f} standard errors (SE {se:.3g} from n = {values.size}); tolerance "
              f"{k} SE")
    return float(z)


def _check_exact_samples(
    what: str, sample: Callable, log_prob: Callable, dim: int, n: int, key
) -> dict[str, float]:
    """Shape, finiteness, determinism, and Stein consistency of samples with `log_prob`."""
    key = _key(key)
    x = sample(key, n)
    if jnp.shape(x) != (n, dim):
        _fail(what, "sample shape", f"sample(key, {n}) has shape {jnp.shape(x)}, expected ({n}, {dim})")
    if not np.array_equal(np.asarray(x), np.asarray(sample(key, n))):
        _fail(what, "sample determinism", "two calls with the same key gave different samples")
    lp, (t1, t2) = jax.jit(lambda x: (jax.vmap(log_prob)(x), _stein(log_prob, x)))(x)
    if not (np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(lp)))):
        _fail(what, "finite samples", "some samples, or log_prob at them, are not finite")
    return {
        "stein_scale_se": _mean_within(
            what, "samples against log_prob (Stein: E[x . grad log p] = -d)", t1, 0.0, K_SE),
        "stein_shift_se": _mean_within(
            what, "samples against log_prob (Stein: E[u . grad log p] = 0)", t2, 0.0, K_SE),
    }


def _marginal_kde(centers: Float[Array, "m d"]) -> tuple[Callable, Callable]:
    """A product over coordinates of one-dimensional Gaussian kernel density estimates
    (Silverman's bandwidth): `(sample(key, n), log_prob(x))`, a proposal close to
    targets with independent coordinates and safe (heavy enough) for the others."""
    m = centers.shape[0]
    h = 1.06 * jnp.std(centers, 0) * m ** -0.2 + 1e-6

    def sample(key, n):
        k0, k1 = jax.random.split(key)
        idx = jax.random.randint(k0, (n, centers.shape[1]), 0, m)
        picked = jnp.take_along_axis(centers, idx, 0)
        return picked + h * jax.random.normal(k1, picked.shape, centers.dtype)

    def log_prob(x):
        per = jax.scipy.stats.norm.logpdf(x, centers, h)  # (m, d)
        return jnp.sum(jax.nn.logsumexp(per, 0) - jnp.log(m))

    return sample, log_prob


def _check_log_Z(
    what: str, sample: Callable, log_prob: Callable, dim: int, log_Z: float, n: int, key
) -> dict[str, float]:
    r"""`log_Z` against a bridge-sampling estimate between exact samples and a proposal.

    The proposal $q$ is a product of per-coordinate kernel density estimates built from
    other exact draws; $Z = E_q[\sqrt{\gamma/q}] / E_\pi[\sqrt{q/\gamma}]$, whose two
    ratios have finite variance whatever the overlap, with a delta-method standard error.
    """
    k_pi, k_q, k_c = jax.random.split(_key(key), 3)

    @jax.jit
    def log_ratios(x, centers, k_q):
        q_sample, log_q = _marginal_kde(centers)
        lg = jax.vmap(lambda z: log_prob(z) - log_q(z))
        return lg(q_sample(k_q, n)), lg(x)

    # n draws each time: one compiled `sample`
    lg_q, lg_pi = log_ratios(sample(k_pi, n), sample(k_c, n)[:512], k_q)
    num, den = 0.5 * np.asarray(lg_q, np.float64), -0.5 * np.asarray(lg_pi, np.float64)
    est, var = 0.0, 0.0
    for sign, v in ((1, num), (-1, den)):
        w = np.exp(v - v.max())
        est += sign * (np.log(w.mean()) + v.max())
        var += w.var(ddof=1) / (n * w.mean() ** 2)
    se = math.sqrt(var)
    dev = abs(est - log_Z)
    if not dev <= K_SE * se:
        _fail(what, "log_Z against a bridge-sampling estimate",
              f"log_Z = {log_Z:.6g}, estimate {est:.6g} +- {se:.3g} (n = {n}): off by "
              f"{dev:.3g} = {dev / se:.2f} SE; tolerance {K_SE} SE")
    return {"log_Z_se": float(dev / se), "log_Z_stderr": se}


def _check_mixture(what: str, target: AbstractTarget, x) -> dict[str, float]:
    mixture = target.mixture
    if not isinstance(mixture, GaussianMixture) or mixture.dim != target.dim:
        _fail(what, "mixture", f"expected an sdekit.GaussianMixture of dimension {target.dim}, "
              f"got {mixture!r}")
    lp, lm = jax.jit(lambda x: (jax.vmap(target.log_prob)(x), jax.vmap(mixture.log_prob)(x)))(x)
    diff = np.asarray(lp, np.float64) - np.asarray(lm, np.float64)
    expected = target.log_Z if target.log_Z is not None else float(np.median(diff))
    scale = 1.0 + np.abs(np.asarray(lp, np.float64))
    tol = 10 * _exact_rtol()
    return {"mixture": _check_errors(
        what, f"log_prob - mixture.log_prob == log_Z ({expected:.6g})", np.abs(diff - expected) / scale,
        [f"x = {np.asarray(p)}" for p in x], tol, "error relative to 1 + |log_prob|")}


def check_target(target: AbstractTarget | str, *, n: int = 4000, key: PRNGKeyArray | None = None) -> dict[str, float]:
    r"""Check a target against the `AbstractTarget` contract.

    - `dim` is a positive int and `log_prob` a real scalar for one point, finite with a
      finite gradient under `jit`, `vmap` and `grad` (`sdekit.check_target`).
    - If it has exact samples (`sample` overridden): `sample(key, n)` has shape `(n, dim)`,
      is finite, gives the same draws for the same key, and agrees with `log_prob` by two
      Stein identities, $E[x\cdot\nabla\log\gamma] = -d$ and $E[u\cdot\nabla\log\gamma] = 0$
      (within `K_SE` standard errors from the `n` draws): a sampler off in scale or
      location fails.
    - If `log_Z` is declared: a finite float, and (with exact samples) within `K_SE`
      standard errors of a bridge-sampling estimate from `n` draws.
    - If `mixture` is declared: a `GaussianMixture` of the same dimension with
      `log_prob - mixture.log_prob == log_Z` at test points (to `10 * EXACT_ULPS` ulps
      of `1 + |log_prob|`).
    """
    target = _build("target", target)
    what = f"target {type(target).__name__}"
    try:
        _check_log_prob(target)
    except TargetError as e:
        _fail(what, "log_prob for one point under jit, vmap and grad", str(e))
    d, key = target.dim, _key(key)
    out: dict[str, float] = {}
    log_Z = target.log_Z
    if log_Z is not None and not (isinstance(log_Z, (int, float)) and math.isfinite(log_Z)):
        _fail(what, "log_Z", f"expected a finite float or None, got {log_Z!r}")
    x = jax.random.normal(jax.random.fold_in(key, 7), (16, d))
    if target.has_exact_samples:
        out.update(_check_exact_samples(what, target.sample, target.log_prob, d, n, key))
        x = jnp.concatenate([x, target.sample(key, n)[:16]])
        if log_Z is not None:
            out.update(_check_log_Z(what, target.sample, target.log_prob, d, log_Z, n, key))
    if target.mixture is not None:
        out.update(_check_mixture(what, target, x))
    return out


# ------------------------------------------------------------------------------ score


def _score_points(key, d: int, target, process, n: int):
    """`(t, x)` test points: the target's exact samples noised to time `t` when possible."""
    if isinstance(process, AbstractProcess):
        lo, hi = float(process.t_min), float(process.t_max)
        ts = jnp.asarray([lo + (hi - lo) * f for f in (0.05, 0.3, 0.6, 0.95)])
    else:
        ts = jnp.asarray([0.1, 0.5, 0.9])
    k0, k1 = jax.random.split(key)
    per = max(n // ts.shape[0], 1)
    if isinstance(target, AbstractTarget) and target.has_exact_samples and process is not None:
        x0 = target.sample(k0, per * ts.shape[0]).reshape(ts.shape[0], per, d)
        a, sig = jax.vmap(process.marginal)(ts)
        x = a[:, None, None] * x0 + sig[:, None, None] * jax.random.normal(k1, x0.shape)
    else:
        x = jax.random.normal(k1, (ts.shape[0], per, d))
    return jnp.repeat(ts, per), x.reshape(-1, d)


def check_score(
    score: AbstractScore | str,
    *,
    target: AbstractTarget | str | None = None,
    process: AbstractProcess | str | None = None,
    dim: int | None = None,
    rtol: float | None = None,
    n: int = 256,
    key: PRNGKeyArray | None = None,
) -> dict[str, float]:
    r"""Check a score (any field of `(t, x)`) against the `AbstractScore` contract.

    A name is built with the given `target` and `process` (names or objects). The test
    points are `n` points at four times of the process's window (three times in `(0, 1)`
    without a process): the target's exact samples noised by the process where both are
    given, standard-normal draws otherwise.

    - `score(t, x)` has shape `(d,)` for one point and is finite under `jit` and `vmap`.
    - An `AbstractPotentialScore` equals `jax.grad` of its `potential`; an
      `AbstractDensityScore`'s `log_prob` is normalised (`check_target`'s bridge estimate
      of its $\log Z$ at one time is 0 within `K_SE` SE), where exact samples exist.
    - With a Gaussian-mixture target (`target.mixture`) and a process: the score against
      the exact score of the noised mixture, relative RMS error at most `rtol` (default
      `10 * EXACT_ULPS` ulps; pass the accuracy you claim for an estimated score).
    """
    target = _build("target", target)
    process = _build("process", process)
    score = _build("score", score, target=target, process=process)
    what = f"score {type(score).__name__}"
    if not isinstance(score, AbstractScore):
        _fail(what, "interface", f"expected an sdekit.AbstractScore, got {type(score).__name__}")
    d = dim if dim is not None else getattr(target, "dim", None)
    if not isinstance(d, int):
        raise ValueError(f"check_score needs the dimension: give dim= or a target, got dim={dim!r}")
    ts, x = _score_points(_key(key), d, target, process, n)
    values = _check_field(what, score, ts, x)
    out: dict[str, float] = {}
    if isinstance(score, AbstractPotentialScore):
        out.update(_check_potential(what, score, ts, x, values))
    if isinstance(target, AbstractTarget) and target.mixture is not None and process is not None:
        out.update(_check_exact_score(what, values, target.mixture, process, ts, x, rtol))
    if isinstance(score, AbstractDensityScore) and isinstance(target, AbstractTarget) \
            and target.has_exact_samples and isinstance(process, AbstractProcess):
        out.update(_check_density_normalised(what, score, target, process, key))
    return out


def _check_field(what: str, score: AbstractScore, ts, x) -> np.ndarray:
    """Shape `(d,)` for one point, and finite values under `jit(vmap(...))`: the values."""
    d = x.shape[-1]
    try:
        shape = jax.eval_shape(score, ts[0], x[0]).shape
    except Exception as e:  # noqa: BLE001 - any failure is the score failing on one point
        _fail(what, "one point", f"score(t, x) fails on x of shape ({d},): {type(e).__name__}: {e}")
    if shape != (d,):
        _fail(what, "shape", f"score(t, x) has shape {shape} for x of shape ({d},); expected ({d},)")
    batch = np.asarray(eqx.filter_jit(lambda ts, x: jax.vmap(score)(ts, x))(ts, x), np.float64)
    if not np.all(np.isfinite(batch)):
        rows = np.flatnonzero(~np.all(np.isfinite(batch), -1))
        _fail(what, "finite values under jit and vmap", f"{rows.size} of {len(batch)} test points "
              f"give non-finite values, e.g. t = {float(ts[rows[0]]):.4g}, x = {np.asarray(x[rows[0]])}")
    return batch


def _relative_rms(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, -1)) / np.mean(np.sum(b**2, -1))))


def _check_potential(what: str, score: AbstractPotentialScore, ts, x, values) -> dict[str, float]:
    g = eqx.filter_jit(lambda ts, x: jax.vmap(jax.grad(score.potential, argnums=1))(ts, x))(ts, x)
    err = _relative_rms(values, g)
    tol = 10 * _exact_rtol()
    if not err <= tol:
        _fail(what, "score == grad(potential)", f"relative RMS difference {err:.3g}; tolerance {tol:.3g}")
    return {"grad_potential": err}


def _check_exact_score(what, values, mixture: GaussianMixture, process, ts, x, rtol) -> dict[str, float]:
    def exact(t, y):
        return mixture.score_transformed(*process.marginal(t), y)

    err = _relative_rms(values, eqx.filter_jit(jax.vmap(exact))(ts, x))
    tol = 10 * _exact_rtol() if rtol is None else rtol
    if not err <= tol:
        _fail(what, "against the exact score of the Gaussian-mixture target",
              f"relative RMS error {err:.3g} over {len(ts)} points; tolerance {tol:.3g}")
    return {"exact_score_rms": err}


def _check_density_normalised(what, score: AbstractDensityScore, target, process, key):
    t = 0.5 * (float(process.t_min) + float(process.t_max))
    a, sig = process.marginal(t)

    def sample(k, n):
        k0, k1 = jax.random.split(k)
        x0 = target.sample(k0, n)
        return a * x0 + sig * jax.random.normal(k1, x0.shape, x0.dtype)

    def log_prob(y):
        return score.log_prob(t, y)

    out = _check_log_Z(f"{what} log_prob at t = {t:.4g}", sample, log_prob, target.dim, 0.0, 4000, key)
    return {"density_" + k: v for k, v in out.items()}


# ---------------------------------------------------------------------------- sampler


def _reference_target() -> AbstractTarget:
    """A Gaussian with a known, non-zero `log_Z` (the built-in `gaussian`: N(1, I) in d = 2)."""
    return create("target", "gaussian")


#: Fewest effective samples (or independent runs) from which log-weights are judged.
_MIN_ESS = 16


def _log_Z_check(what: str, lw: np.ndarray, log_Z: float) -> dict[str, float]:
    r"""$\log\hat Z$ within `K_SE` delta-method SE of `log_Z` (plus the $SE^2/2$ bias), and
    the ELBO (mean log-weight) at most `log_Z` + `K_SE` SE. `lw` are i.i.d. log-weights
    (or the $\log\hat Z$ of independent runs): $E[e^{lw}] = Z$."""
    n = lw.size
    w = np.exp(lw - lw.max())
    ess = w.sum() ** 2 / (w**2).sum()
    if ess < _MIN_ESS:
        _fail(what, "log-weights", f"effective sample size {ess:.1f} of n = {n} is below "
              f"{_MIN_ESS}: too few to check the weights; raise n")
    est = float(log_Z_estimate(jnp.asarray(lw)))
    se = math.sqrt(w.var(ddof=1) / n) / w.mean()
    dev = est - log_Z
    if not abs(dev) <= K_SE * se + 0.5 * se**2:
        _fail(what, "log-weights exact (log Z estimate against the analytic log Z)",
              f"log Z estimate {est:.5g} +- {se:.3g} (n = {n}, ESS {ess:.0f}), analytic "
              f"{log_Z:.5g}: off by {dev:.3g} = {abs(dev) / se:.2f} SE; tolerance {K_SE} SE "
              f"+ SE^2/2")
    elbo, se_elbo = lw.mean(), lw.std(ddof=1) / math.sqrt(n)
    if not elbo <= log_Z + K_SE * se_elbo:
        _fail(what, "ELBO <= log Z", f"mean log-weight {elbo:.5g} exceeds log Z {log_Z:.5g} by "
              f"{elbo - log_Z:.3g} = {(elbo - log_Z) / se_elbo:.2f} SE; tolerance {K_SE} SE")
    return {"log_Z_se": float(abs(dev) / se), "ess": float(ess)}


def _check_samples(what: str, out: Any, n: int, d: int) -> None:
    if not isinstance(out, Samples):
        _fail(what, "sample", f"sample(key, n) must return sdekit.Samples, got {type(out).__name__}")
    if jnp.shape(out.x) != (n, d):
        _fail(what, "sample shape", f"Samples.x has shape {jnp.shape(out.x)}, expected ({n}, {d})")
    if not np.all(np.isfinite(np.asarray(out.x))):
        _fail(what, "finite samples", f"{int(np.sum(~np.isfinite(np.asarray(out.x))))} non-finite entries in Samples.x")
    if out.log_weights is not None:
        lw = np.asarray(out.log_weights)
        if lw.shape != (n,):
            _fail(what, "log-weights shape", f"shape {lw.shape}, expected ({n},)")
        if np.any(np.isnan(lw) | (lw == np.inf)) or not np.any(np.isfinite(lw)):
            _fail(what, "finite log-weights", f"nan or +inf, or no finite log-weight: {lw[:8]}")


def _same(a: Samples, b: Samples) -> bool:
    same_w = (a.log_weights is None) == (b.log_weights is None)
    if same_w and a.log_weights is not None:
        same_w = np.array_equal(np.asarray(a.log_weights), np.asarray(b.log_weights), equal_nan=True)
    return same_w and np.array_equal(np.asarray(a.x), np.asarray(b.x), equal_nan=True)


def check_sampler(
    sampler: AbstractSampler | str | dict,
    target: AbstractTarget | str | None = None,
    *,
    n: int = 2000,
    key: PRNGKeyArray | None = None,
) -> dict[str, float]:
    r"""Check a sampler against the `AbstractSampler` contract and its declared capabilities.

    A name (or `{"name": ..., **options}`) is composed with `target`, by default the
    built-in `gaussian` (N(1, I) in d = 2, $\log Z = 1.5$). An instance is checked on
    `target`, by default its own (`AbstractDiffusionSampler.target`).

    - `sample(key, n)` returns `Samples` with `x` of shape `(n, d)`, finite, and
      log-weights `None` or of shape `(n,)` without `nan`; `sample_with_stats` with the
      same key returns the same samples (determinism) and a dict of finite numbers.
    - With log-weights and a known `log_Z`: $\log\hat Z$ within `K_SE` standard errors
      (delta method from the weights' variance, plus the $SE^2/2$ bias of the log) of
      `log_Z`, and the ELBO at most `log_Z` + `K_SE` SE. An effective sample size under
      16 fails as too small to judge: raise `n`. Log-weights all equal (a resampling
      sampler carrying its run's estimate, as SMC does) are judged from the estimates
      of 24 independent runs of `n` particles (keep `n` small for such a sampler).
    - `AbstractPathSampler`, given a target with exact samples: `backward_log_weights` on
      `n` exact samples has shape `(n,)`, and the EUBO (its mean) is at least
      `log_Z` - `K_SE` SE.
    - `AbstractDiffusionSampler`: `process`, `score`, `target` of the declared types, and
      `sample_from(key, x0)` from prior draws returns finite `(n, d)` points.
    """
    target = _build("target", target)
    if isinstance(sampler, (str, dict)):
        target = _reference_target() if target is None else target
        sampler = compose(target, sampler)
    what = f"sampler {type(sampler).__name__}"
    if not isinstance(sampler, AbstractSampler):
        _fail(what, "interface", f"expected an sdekit.AbstractSampler, got {type(sampler).__name__}")
    if target is None and isinstance(sampler, AbstractDiffusionSampler):
        target = sampler.target
    if not isinstance(target, AbstractTarget):
        raise ValueError(f"check_sampler needs a target for {what}: give target=...")
    key = _key(key)
    out = sampler.sample(key, n)
    _check_samples(what, out, n, target.dim)
    measured = _check_stats(what, sampler, out, key, n)
    if out.log_weights is not None and target.log_Z is not None:
        measured.update(_check_weights(what, sampler, out, target.log_Z, key, n))
    if isinstance(sampler, AbstractPathSampler) and target.has_exact_samples:
        measured.update(_check_eubo(what, sampler, target, key, n))
    if isinstance(sampler, AbstractDiffusionSampler):
        _check_diffusion_sampler(what, sampler, target.dim, key, n)
    return measured


#: Independent runs for a sampler whose log-weights are all equal.
_RUNS = 24


def _check_weights(what: str, sampler, out: Samples, log_Z: float, key, n: int) -> dict[str, float]:
    """Log-weights against `log_Z`. Equal log-weights (a resampling sampler carrying its
    run's estimate, as SMC does) say nothing about their error within one run: then the
    estimates of `_RUNS` independent runs of `n` particles are checked instead."""
    lw = np.asarray(out.log_weights, np.float64)
    if np.ptp(lw) > 0:
        return _log_Z_check(what, lw, log_Z)
    runs = [log_Z_estimate(sampler.sample(jax.random.fold_in(key, 100 + r), n).log_weights)
            for r in range(_RUNS)]
    return _log_Z_check(f"{what} (log Z estimates of {_RUNS} runs of {n})",
                        np.asarray(runs, np.float64), log_Z)


def _check_stats(what: str, sampler: AbstractSampler, out: Samples, key, n: int) -> dict[str, float]:
    result = sampler.sample_with_stats(key, n)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        _fail(what, "sample_with_stats", f"expected (Samples, dict), got {type(result).__name__}")
    samples, stats = result
    if not _same(samples, out):
        _fail(what, "determinism", "sample(key, n) and sample_with_stats(key, n) with the same "
              "key gave different samples")
    _check_numbers(what, "sample_with_stats statistics", stats)
    return {}


def _check_eubo(what: str, sampler: AbstractPathSampler, target: AbstractTarget, key, n: int):
    x = target.sample(jax.random.fold_in(key, 3), n)
    lw = np.asarray(sampler.backward_log_weights(jax.random.fold_in(key, 4), x), np.float64)
    if lw.shape != (n,) or np.any(np.isnan(lw)):
        _fail(what, "backward_log_weights", f"expected {n} log-weights without nan, got shape "
              f"{lw.shape}: {lw[:8]}")
    eubo, se = lw.mean(), lw.std(ddof=1) / math.sqrt(n)
    if not eubo >= target.log_Z - K_SE * se:
        _fail(what, "EUBO >= log Z", f"EUBO {eubo:.5g} is below log Z {target.log_Z:.5g} by "
              f"{target.log_Z - eubo:.3g} = {(target.log_Z - eubo) / se:.2f} SE; tolerance {K_SE} SE")
    return {"eubo_minus_log_Z": float(eubo - target.log_Z)}


def _check_diffusion_sampler(what: str, sampler: AbstractDiffusionSampler, d: int, key, n: int):
    for name, base in (("process", AbstractProcess), ("score", AbstractScore)):
        if not isinstance(getattr(sampler, name), base):
            _fail(what, f"declared {name}", f"expected an {base.__name__}, got "
                  f"{type(getattr(sampler, name)).__name__}")
    if sampler.target is not None and not isinstance(sampler.target, AbstractTarget):
        _fail(what, "declared target", f"expected an AbstractTarget or None, got {sampler.target!r}")
    m = min(n, 256)
    x0 = sampler.process.prior_sample(jax.random.fold_in(key, 5), (m, d))
    x = sampler.sample_from(jax.random.fold_in(key, 6), x0)
    if jnp.shape(x) != (m, d) or not np.all(np.isfinite(np.asarray(x))):
        _fail(what, "sample_from", f"expected finite points of shape ({m}, {d}), got shape {jnp.shape(x)}")


# ------------------------------------------------------------------------- diagnostic


def _is_number(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.number)) or (
        isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0)


def _check_numbers(what: str, prop: str, values: Any) -> None:
    """A dict of str to finite numbers (or lists of them; booleans allowed)."""
    if not isinstance(values, dict):
        _fail(what, prop, f"expected a dict, got {type(values).__name__}")
    for name, value in values.items():
        if not isinstance(name, str):
            _fail(what, prop, f"key {name!r} is not a str")
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if not _is_number(item):
                _fail(what, prop, f"{name!r} is {item!r}, expected a number or a list of numbers")
            if not np.isfinite(float(item)):
                _fail(what, prop, f"{name!r} is {item!r}, expected a finite number")


def _equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)) for k in a)


def check_diagnostic(
    diagnostic: AbstractDiagnostic | str | dict,
    *,
    key: PRNGKeyArray | None = None,
    **inputs: Any,
) -> dict[str, Any]:
    """Check a diagnostic against the `AbstractDiagnostic` contract; returns its values.

    `diagnostic` is an instance, a registered name or a `{"name": ..., **options}` dict.
    `inputs` are the keyword arguments it is called with (`target=`, `sampler=`,
    `samples=`, …). The result is a dict of `str` to finite numbers (or lists of them,
    booleans allowed), possibly `{}` when the diagnostic does not apply, and a second call
    with the same key returns exactly the same values.
    """
    diagnostic = _build("diagnostic", diagnostic)
    what = f"diagnostic {type(diagnostic).__name__}"
    if not isinstance(diagnostic, AbstractDiagnostic):
        _fail(what, "interface", f"expected an sdekit.AbstractDiagnostic, got {type(diagnostic).__name__}")
    key = _key(key)
    values = diagnostic(key, **inputs)
    _check_numbers(what, "returned values", values)
    again = diagnostic(key, **inputs)
    if not _equal(values, again):
        changed = sorted(k for k in values if k not in again or not _equal({k: values[k]}, {k: again[k]}))
        _fail(what, "determinism", f"two calls with the same key differ in {changed or 'their keys'}")
    return values
