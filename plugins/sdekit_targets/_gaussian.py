import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from sdekit import AbstractTarget, GaussianMixture

from ._checks import (
    as_array,
    check_all_positive,
    check_dim,
    check_real,
    cholesky,
    is_concrete,
    shape_error,
)


def _mvn_log_prob(x, mean, chol):
    """`log N(x; mean, chol chol^T)` for one point, `chol` lower triangular."""
    z = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * jnp.sum(z**2) - log_det - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)


class Gaussian(AbstractTarget):
    r"""Gaussian $\mathcal N(\mu, \Sigma)$ scaled by a known constant: $\log\gamma(x) = \log\mathcal N(x; \mu, \Sigma) + \log Z$.

    Exact samples, exact $\log Z$, and a one-component `mixture` (so exact scores).

    **Arguments:**

    - `dim`: dimension; inferred from `mean`, `scale` or `cov` when not given, else 2.
    - `mean`: `(d,)` mean $\mu$; default all ones (deliberately not the origin).
    - `scale`: standard deviation, a positive scalar or a `(d,)` vector of stds
      (a diagonal $\Sigma$). Default 1.
    - `cov`: instead of `scale`, a covariance: a scalar variance, a `(d,)` vector of
      variances or a full `(d, d)` symmetric positive definite matrix.
    - `log_Z`: the known log normalising constant; non-zero by default (1.5) so that an
      estimator that silently assumes $Z = 1$ fails its tests.
    """

    dim: int = eqx.field(static=True)
    mean: Float[Array, " d"]
    cov: Float[Array, "d d"]
    chol: Float[Array, "d d"]
    _log_Z: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int | None = None,
        mean=None,
        scale=None,
        cov=None,
        log_Z: float = 1.5,
    ):
        if scale is not None and cov is not None:
            raise ValueError(f"give scale or cov, not both (got scale={scale!r}, cov={cov!r})")
        given = {"mean": mean, "scale": scale, "cov": cov}
        arrays = {k: as_array(v, k) for k, v in given.items() if v is not None}
        if dim is None:
            inferred = [a.shape[0] for a in arrays.values() if a.ndim >= 1]
            dim = inferred[0] if inferred else 2
        dim = check_dim(dim)

        m = arrays.get("mean", jnp.ones(dim))
        if m.shape != (dim,):
            raise shape_error("mean", mean, f"(dim,) = ({dim},)")

        if "cov" in arrays:
            c = arrays["cov"]
            if c.ndim == 0 or c.shape == (dim,):
                check_all_positive(c, "cov", cov)
                c = jnp.broadcast_to(c, (dim,))
                cov_matrix = jnp.diag(c)
            elif c.shape == (dim, dim):
                cov_matrix = c
            else:
                raise shape_error(
                    "cov", cov, f"() (a variance), ({dim},) (variances) or ({dim}, {dim})"
                )
        else:
            s = arrays.get("scale", jnp.ones(()))
            if not (s.ndim == 0 or s.shape == (dim,)):
                raise shape_error("scale", scale, f"() (one std) or ({dim},) (a std per coordinate)")
            check_all_positive(s, "scale", scale)
            cov_matrix = jnp.diag(jnp.broadcast_to(s, (dim,)) ** 2)

        self.dim = dim
        self.mean = m
        self.chol = cholesky(cov_matrix, "cov", cov)
        self.cov = 0.5 * (cov_matrix + cov_matrix.T)
        self._log_Z = check_real(log_Z, "log_Z")

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return _mvn_log_prob(x, self.mean, self.chol) + self._log_Z

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        eps = jax.random.normal(key, (n, self.dim), dtype=self.mean.dtype)
        return self.mean + eps @ self.chol.T

    @property
    def log_Z(self) -> float:
        return self._log_Z

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(jnp.ones(1), self.mean[None], self.cov[None])


class GMM(AbstractTarget):
    r"""Gaussian mixture $\sum_k w_k \mathcal N(\mu_k, \Sigma_k)$ scaled by a known constant $Z$.

    $\log\gamma(x) = \log\sum_k w_k\mathcal N(x; \mu_k, \Sigma_k) + \log Z$. Exact samples,
    exact $\log Z$, and `mixture` (so exact scores under every built-in process).

    **Arguments:**

    - `weights`: `(K,)` non-negative weights, normalised here; default equal weights.
    - `means`: `(K, d)` component means; default two components at $(\pm 2, 0)$.
    - `covs`: covariances: `None` (identity), a scalar variance shared by all components,
      `(K,)` one variance per component, `(K, d)` diagonal variances, or `(K, d, d)` full
      symmetric positive definite matrices.
    - `log_Z`: the log normalising constant of $\gamma$ (default 0).
    """

    dim: int = eqx.field(static=True)
    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    covs: Float[Array, "K d d"]
    chol: Float[Array, "K d d"]
    _log_Z: float = eqx.field(static=True)

    def __init__(
        self,
        weights=None,
        means=((-2.0, 0.0), (2.0, 0.0)),
        covs=None,
        log_Z: float = 0.0,
    ):
        mu = as_array(means, "means")
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise shape_error("means", means, "(K, d) with K >= 1 components in d >= 1 dimensions")
        K, d = mu.shape

        if weights is None:
            w = jnp.full((K,), 1.0 / K, dtype=float)
        else:
            w = as_array(weights, "weights")
            if w.shape != (K,):
                raise shape_error("weights", weights, f"(K,) = ({K},), one per row of means")
            if is_concrete(w):
                if not bool(jnp.all(w >= 0)):
                    raise ValueError(f"weights must be non-negative, got {weights!r}")
                if not bool(jnp.sum(w) > 0):
                    raise ValueError(f"weights must have a positive sum, got {weights!r}")
            w = w / jnp.sum(w)

        if covs is None:
            c = jnp.broadcast_to(jnp.eye(d), (K, d, d))
        else:
            c = as_array(covs, "covs")
            if c.ndim == 0 or c.shape in ((K,), (K, d)):
                check_all_positive(c, "covs", covs)
                var = c if c.ndim != 1 else c[:, None]
                c = jnp.broadcast_to(var, (K, d))[..., None] * jnp.eye(d)
            elif c.shape != (K, d, d):
                raise shape_error(
                    "covs", covs,
                    f"() (a shared variance), ({K},), ({K}, {d}) or ({K}, {d}, {d}) "
                    f"for K={K} components in d={d} dimensions",
                )

        self.dim = int(d)
        self.weights = w
        self.means = mu
        self.chol = cholesky(c, "covs", covs)
        self.covs = 0.5 * (c + jnp.swapaxes(c, -1, -2))
        self._log_Z = check_real(log_Z, "log_Z")

    def component_log_probs(self, x: Float[Array, " d"]) -> Float[Array, " K"]:
        r"""$\log w_k + \log\mathcal N(x; \mu_k, \Sigma_k)$ for every component."""
        return jnp.log(self.weights) + jax.vmap(_mvn_log_prob, in_axes=(None, 0, 0))(
            x, self.means, self.chol
        )

    @eqx.filter_jit
    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return jax.nn.logsumexp(self.component_log_probs(x)) + self._log_Z

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(k_noise, (n, self.dim), dtype=self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.chol[comp], eps)

    @property
    def log_Z(self) -> float:
        return self._log_Z

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.weights, self.means, self.covs)


def gmm40(dim: int = 2) -> GMM:
    r"""40 equal-weight unit-covariance Gaussians, means uniform on $[-40, 40]^d$; $\log Z = 0$.

    The means are `jax.random.uniform(jax.random.PRNGKey(0), (40, dim), minval=-40,
    maxval=40)`, drawn in float32 so they are the same with or without `jax_enable_x64`.

    **Arguments:** `dim` (default 2).
    """
    dim = check_dim(dim)
    means = jax.random.uniform(
        jax.random.PRNGKey(0), (40, dim), dtype=jnp.float32, minval=-40.0, maxval=40.0
    )
    return GMM(weights=None, means=means, covs=None, log_Z=0.0)
