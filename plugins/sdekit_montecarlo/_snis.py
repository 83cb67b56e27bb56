"""Self-normalised importance sampling with streaming (chunked) accumulation.

Both training-free drifts are ratios $E[w(Z) v(Z)] / E[w(Z)]$ over standard-normal draws
$Z$, estimated from `draws` of them. The draws are processed `chunk` at a time with an
online (running-max) log-sum-exp, so one call for one point holds `chunk` draws; under
`jax.vmap` over `N` points, `N x chunk` of them.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike


class _Sums(eqx.Module):
    """Running sums over draws $j$ relative to the running max $m$ of the log-weights $l_j$:
    $s = \\sum e^{l_j - m}$, $v = \\sum e^{l_j - m} v_j$ and, for the standard error,
    $s_2 = \\sum e^{2(l_j - m)}$, $v_2 = \\sum e^{2(l_j - m)} v_j$,
    $q_2 = \\sum e^{2(l_j - m)} |v_j|^2$."""

    m: Scalar
    s: Scalar
    v: Array
    s2: Scalar
    v2: Array
    q2: Scalar

    @classmethod
    def empty(cls, dim: int, dtype) -> "_Sums":
        zero = jnp.zeros((), dtype)
        return cls(jnp.full((), -jnp.inf, dtype), zero, jnp.zeros(dim, dtype), zero,
                   jnp.zeros(dim, dtype), zero)

    def add(self, log_w: Float[Array, " c"], values: Float[Array, "c d"]) -> "_Sums":
        m = jnp.maximum(self.m, jnp.max(log_w))
        m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
        old = jnp.exp(self.m - m_safe)
        w = jnp.exp(log_w - m_safe)
        # a draw of weight 0 contributes nothing, even where its value is not finite
        wv = jnp.where(w[:, None] > 0, w[:, None] * values, 0.0)
        w2v = w[:, None] * wv
        return _Sums(
            m,
            old * self.s + jnp.sum(w),
            old * self.v + jnp.sum(wv, axis=0),
            old**2 * self.s2 + jnp.sum(w**2),
            old**2 * self.v2 + jnp.sum(w2v, axis=0),
            old**2 * self.q2 + jnp.sum(jnp.where(w > 0, w**2 * jnp.sum(values**2, axis=-1), 0.0)),
        )

    def mean(self) -> Array:
        return self.v / self.s

    def std_error(self) -> Scalar:
        r"""Delta-method standard error of the ratio, $\sqrt{\sum_j \bar w_j^2 |v_j - \hat v|^2}$
        with normalised weights $\bar w_j$ (summed over coordinates)."""
        mean = self.mean()
        var = self.q2 - 2 * jnp.dot(mean, self.v2) + jnp.sum(mean**2) * self.s2
        return jnp.sqrt(jnp.maximum(var, 0.0)) / self.s


def snis(
    fn: Callable[[Float[Array, " d"]], tuple[Scalar, Float[Array, " d"]]],
    key: PRNGKeyArray,
    dim: int,
    draws: int,
    chunk: int,
    dtype,
) -> _Sums:
    """Accumulate `fn(z) = (log-weight, value)` over `draws` standard-normal `z`, `chunk` at a time.

    Chunk `i` uses `fold_in(key, i)`; full chunks run in a `lax.scan`, the remainder
    (`draws % chunk` draws) in one more step, so exactly `draws` draws are evaluated.
    """
    batched = jax.vmap(fn)

    def add(sums, i, size):
        z = jax.random.normal(jax.random.fold_in(key, i), (size, dim), dtype)
        return sums.add(*batched(z))

    full, rest = divmod(draws, chunk)
    sums = _Sums.empty(dim, dtype)
    sums, _ = jax.lax.scan(lambda c, i: (add(c, i, chunk), None), sums, jnp.arange(full))
    if rest:
        sums = add(sums, full, rest)
    return sums


#: Odd multipliers for hashing the bits of a point (a fixed table; `d` beyond it wraps).
_MULTIPLIERS = np.asarray(
    np.random.default_rng(0x5DEC).integers(0, 2**31, size=4096, dtype=np.uint64) * 2 + 1,
    dtype=np.uint32,
)


def _bits(x: Array) -> Array:
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)


def point_key(key: PRNGKeyArray, t: ScalarLike, x: Float[Array, " d"]) -> PRNGKeyArray:
    r"""A key for the point `(t, x)`: `key` folded with the bits of `t` and a hash of `x`.

    The hash is $\sum_i c_i b_i \bmod 2^{32}$ over the float32 bit patterns $b_i$ of the
    coordinates, with fixed odd multipliers $c_i$: distinct points get distinct,
    independent-looking draws; the same point always the same ones.
    """
    c = jnp.asarray(_MULTIPLIERS[np.arange(x.shape[-1]) % _MULTIPLIERS.shape[0]])
    h = jnp.sum(_bits(x) * c, dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.fold_in(key, _bits(t)), h)


def draws_key(key: PRNGKeyArray, common_draws: bool, t: ScalarLike, x: Array) -> PRNGKeyArray:
    return key if common_draws else point_key(key, t, x)
