import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Scalar, ScalarLike

from sdekit import AbstractProcess


def _check_real(**values: float) -> None:
    """A `ValueError` naming the option unless each value is a finite real number."""
    for name, value in values.items():
        try:
            ok = not isinstance(value, (bool, str, bytes)) and math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a finite real number, got {value!r}")


def _check_positive(**values: float) -> None:
    _check_real(**values)
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def _check_times(T: float, t_min: float, t_max: float) -> None:
    _check_positive(T=T)
    _check_real(t_min=t_min, t_max=t_max)
    if not 0 <= t_min < t_max <= T:
        raise ValueError(f"need 0 <= t_min < t_max <= T, got t_min={t_min}, t_max={t_max}, T={T}")


class _BetaSchedule(eqx.Module):
    r"""$\beta(t)$ and $B(t) = \int_0^t \beta$ for the linear or cosine schedule."""

    schedule: str = eqx.field(static=True)
    beta_min: float
    beta_max: float
    T: float
    cosine_offset: float = 0.008

    def __check_init__(self):
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        _check_positive(beta_min=self.beta_min, beta_max=self.beta_max)

    def _phase(self, t):
        s = self.cosine_offset
        return (t / self.T + s) / (1 + s) * jnp.pi / 2

    def beta(self, t: ScalarLike) -> Scalar:
        if self.schedule == "linear":
            return self.beta_min + (self.beta_max - self.beta_min) * t / self.T
        # tan is evaluated only below the cap time: at t = T the phase is pi/2, which
        # float32 can round past pi/2, where tan is negative (beta < 0, g = NaN).
        rate = jnp.pi / (2 * self.T * (1 + self.cosine_offset))
        t_cap = self._t_cap()
        beta = 2 * rate * jnp.tan(self._phase(jnp.minimum(t, t_cap)))
        return jnp.where(t >= t_cap, self.beta_max, jnp.minimum(beta, self.beta_max))

    def _t_cap(self) -> Scalar:
        """The time at which the cosine beta reaches `beta_max` (0 if it starts above)."""
        rate = jnp.pi / (2 * self.T * (1 + self.cosine_offset))
        phase_cap = jnp.arctan(self.beta_max / (2 * rate))
        t_cap = (phase_cap * 2 * (1 + self.cosine_offset) / jnp.pi - self.cosine_offset) * self.T
        return jnp.maximum(t_cap, 0.0)

    def integral(self, t: ScalarLike) -> Scalar:
        if self.schedule == "linear":
            return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T
        # B(t) = -2 log(cos(phase(t)) / cos(phase(0))); beta is capped at beta_max near T
        # so the cap is applied to B through the time at which beta reaches it (t_cap is
        # 0 when beta_max is below beta(0): beta is then beta_max from t = 0 on).
        t_cap = self._t_cap()
        tc = jnp.minimum(t, t_cap)
        base = -2 * (jnp.log(jnp.cos(self._phase(tc))) - jnp.log(jnp.cos(self._phase(0.0))))
        return base + self.beta_max * jnp.maximum(t - t_cap, 0.0)

    def increment(self, s: ScalarLike, t: ScalarLike) -> Scalar:
        r"""$B(t) - B(s) = \int_s^t \beta$, accurate when `t` is close to `s`.

        Formed from `t - s` rather than as a difference of `integral`s, whose rounding
        error (relative to $B$) would dominate a short step's increment.
        """
        if self.schedule == "linear":
            slope = 0.5 * (self.beta_max - self.beta_min) / self.T
            return (t - s) * (self.beta_min + slope * (t + s))
        # Below the cap: cos(phi_s + D) / cos(phi_s) = 1 - 2 sin^2(D/2) - tan(phi_s) sin(D),
        # with D = phi_t - phi_s computed from t - s; above the cap beta is beta_max.
        t_cap = self._t_cap()
        sc, tc = jnp.minimum(s, t_cap), jnp.minimum(t, t_cap)
        delta = (tc - sc) / (self.T * (1 + self.cosine_offset)) * jnp.pi / 2
        ratio_m1 = -2 * jnp.sin(0.5 * delta) ** 2 - jnp.tan(self._phase(sc)) * jnp.sin(delta)
        capped = self.beta_max * (jnp.maximum(t, t_cap) - jnp.maximum(s, t_cap))
        return -2 * jnp.log1p(ratio_m1) + capped


class VP(AbstractProcess):
    r"""Variance-preserving (Ornstein–Uhlenbeck) SDE $dY = -\tfrac12\beta(t) Y\,dt + \sigma\sqrt{\beta(t)}\,dW$.

    $Y_t \mid Y_0 \sim \mathcal N(\alpha_t Y_0, \sigma^2(1-\alpha_t^2) I)$ with
    $\alpha_t = e^{-\frac12\int_0^t\beta}$; stationary law $\mathcal N(0, \sigma^2 I)$.

    **Arguments:** `schedule` (`"linear"` from `beta_min` to `beta_max`, or `"cosine"`,
    capped at `beta_max`), `sigma` (stationary std), horizon `T`, sampling window
    `[t_min, t_max]`.
    """

    schedule: _BetaSchedule
    sigma: float
    T: float
    t_min: float
    t_max: float

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma: float = 1.0,
        T: float = 1.0,
        t_min: float = 1e-3,
        t_max: float | None = None,
    ):
        _check_positive(sigma=sigma)
        t_max = T if t_max is None else t_max
        _check_times(T, t_min, t_max)
        self.schedule = _BetaSchedule(schedule, beta_min, beta_max, T)
        self.sigma, self.T, self.t_min, self.t_max = sigma, T, t_min, t_max

    def drift(self, t, y):
        return -0.5 * self.schedule.beta(t) * y

    def diffusion(self, t):
        return self.sigma * jnp.sqrt(self.schedule.beta(t))

    def transition(self, s, t):
        dB = self.schedule.increment(s, t)
        return jnp.exp(-0.5 * dB), self.sigma * jnp.sqrt(-jnp.expm1(-dB))

    def reference_std(self, t):
        return jnp.asarray(self.sigma, dtype=float)


class SubVP(AbstractProcess):
    r"""Sub-VP SDE $dY = -\tfrac12\beta Y\,dt + \sigma\sqrt{\beta(t)(1-e^{-2B(t)})}\,dW$.

    $Y_t \mid Y_0 \sim \mathcal N(\alpha_t Y_0, \sigma^2(1-\alpha_t^2)^2 I)$. The reference
    process starts at $0$, so its marginal std is $\sigma(1 - e^{-B(t)})$.
    """

    schedule: _BetaSchedule
    sigma: float
    T: float
    t_min: float
    t_max: float

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma: float = 1.0,
        T: float = 1.0,
        t_min: float = 1e-3,
        t_max: float | None = None,
    ):
        _check_positive(sigma=sigma)
        t_max = T if t_max is None else t_max
        _check_times(T, t_min, t_max)
        self.schedule = _BetaSchedule(schedule, beta_min, beta_max, T)
        self.sigma, self.T, self.t_min, self.t_max = sigma, T, t_min, t_max

    def drift(self, t, y):
        return -0.5 * self.schedule.beta(t) * y

    def diffusion(self, t):
        B = self.schedule.integral(t)
        return self.sigma * jnp.sqrt(self.schedule.beta(t) * -jnp.expm1(-2 * B))

    def transition(self, s, t):
        Bs, dB = self.schedule.integral(s), self.schedule.increment(s, t)
        # Var = 1 - e^{Bs-Bt} + e^{-2Bt} - e^{-Bs-Bt}  =  (1 - e^{Bs-Bt}) (1 - e^{-Bs-Bt})
        var = -jnp.expm1(-dB) * -jnp.expm1(-2 * Bs - dB)
        return jnp.exp(-0.5 * dB), self.sigma * jnp.sqrt(var)

    def reference_std(self, t):
        return self.sigma * -jnp.expm1(-self.schedule.integral(t))


class VE(AbstractProcess):
    r"""Variance-exploding SDE $dY = \sqrt{d\sigma(t)^2/dt}\,dW$, $\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T}$.

    $Y_t \mid Y_s \sim \mathcal N(Y_s, (\sigma(t)^2 - \sigma(s)^2) I)$; the reference process
    starts from $\mathcal N(0, \sigma_{\min}^2 I)$, so its marginal std is $\sigma(t)$.
    """

    sigma_min: float
    sigma_max: float
    T: float
    t_min: float
    t_max: float

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        T: float = 1.0,
        t_min: float = 1e-5,
        t_max: float | None = None,
    ):
        _check_positive(sigma_min=sigma_min)
        if not sigma_max > sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min={sigma_min}, got {sigma_max!r}")
        t_max = T if t_max is None else t_max
        _check_times(T, t_min, t_max)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.T, self.t_min, self.t_max = T, t_min, t_max

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def drift(self, t, y):
        return jnp.zeros_like(y)

    def diffusion(self, t):
        return self._sigma(t) * jnp.sqrt(2 * jnp.log(self.sigma_max / self.sigma_min) / self.T)

    def transition(self, s, t):
        # sigma(t)^2 - sigma(s)^2 = sigma(s)^2 expm1(2 (t - s) / T log(sigma_max / sigma_min)):
        # exactly 0 at t = s and accurate for close times, where the plain difference
        # cancels (and rounding could make it negative: a NaN std)
        rate = 2 * jnp.log(self.sigma_max / self.sigma_min) / self.T
        return jnp.ones(()), self._sigma(s) * jnp.sqrt(jnp.expm1(rate * (t - s)))

    def reference_std(self, t):
        return self._sigma(t)


class PBM(AbstractProcess):
    r"""Pinned Brownian motion, the Föllmer reference: $X_0 = 0$, $dX = \sigma\,dW$, $X_T \sim \mathcal N(0, \sigma^2 T)$.

    As a noising process it is the time reversal, the Brownian bridge to $0$:
    $dY = -\frac{Y}{T-t}dt + \sigma dW$, $Y_t \mid Y_0 \sim \mathcal N((1-\frac tT) Y_0, \sigma^2\frac{t(T-t)}{T} I)$,
    with reference marginal $\mathcal N(0, \sigma^2 (T - t) I)$. Generation starts at
    `t_max` $= T(1-10^{-6})$ by default, close to the singular point mass at $T$.
    """

    sigma: float
    T: float
    t_min: float
    t_max: float

    def __init__(
        self, sigma: float = 1.0, T: float = 1.0, t_min: float = 0.0, t_max: float | None = None
    ):
        _check_positive(sigma=sigma)
        t_max = T * (1 - 1e-6) if t_max is None else t_max
        if t_max >= T:
            raise ValueError(f"pbm needs t_max < T={T} (the bridge is singular at T), got {t_max}")
        _check_times(T, t_min, t_max)
        self.sigma, self.T, self.t_min, self.t_max = sigma, T, t_min, t_max

    @property
    def default_spacing(self) -> str:
        return "quadratic-prior"

    def drift(self, t, y):
        return -y / (self.T - t)

    def diffusion(self, t):
        return jnp.asarray(self.sigma, dtype=float)

    def transition(self, s, t):
        coef = (self.T - t) / (self.T - s)
        return coef, self.sigma * jnp.sqrt((t - s) * coef)

    def reference_std(self, t):
        return self.sigma * jnp.sqrt(self.T - t)
