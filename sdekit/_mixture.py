import jax
import jax.numpy as jnp
import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, ScalarLike


class GaussianMixture(eqx.Module):
    r"""A normalised Gaussian mixture $\sum_k w_k \mathcal N(\mu_k, \Sigma_k)$.

    It is closed under the Gaussian transitions of every built-in process, so it gives
    exact marginals $p_t$ and exact scores $\nabla \log p_t$: the ground truth of the tests.

    **Arguments:**

    - `weights`: `(K,)` non-negative, normalised on construction.
    - `means`: `(K, d)`.
    - `covs`: `(K, d, d)` symmetric positive definite.

    The per-point methods (`log_prob`, `score`, …) are meant to be `jax.vmap`-ed over
    points. They work in the eigenbasis $\Sigma_k = U_k \operatorname{diag}(\lambda_k) U_k^\top$,
    which depends on the mixture only: under `vmap` it is computed once, and the per-point
    work is plain matrix products (batched tiny LAPACK solves are very slow on CPU). The
    `*_transformed` methods evaluate the law of `coef * X + std * Z` in the same basis, so a
    time-dependent marginal $p_t$ costs no factorisation per time, even when `t` is batched
    (an adaptive ODE solver under `vmap` gives every trajectory its own `t`).
    """

    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    covs: Float[Array, "K d d"]

    def __init__(self, weights, means, covs):
        weights = jnp.asarray(weights, dtype=float)
        self.weights = weights / jnp.sum(weights)
        self.means = jnp.asarray(means, dtype=float)
        self.covs = jnp.asarray(covs, dtype=float)

    @property
    def dim(self) -> int:
        """The dimension $d$."""
        return self.means.shape[-1]

    def _whitened(self, coef, std, x):
        """`log w_k + log N(x; m_k, S_k)`, `U_k^T S_k^{-1} (x - m_k)` and `U`, where
        `m_k = coef mu_k`, `S_k = coef^2 Sigma_k + std^2 I = U_k diag(var_k) U_k^T`."""
        lam, U = jnp.linalg.eigh(self.covs)  # (K, d), (K, d, d); independent of x and t
        var = coef**2 * lam + std**2
        z = jnp.einsum("kji,kj->ki", U, x - coef * self.means)  # U_k^T (x - m_k)
        log_p = (
            jnp.log(self.weights)
            - 0.5 * jnp.sum(z**2 / var, axis=-1)
            - 0.5 * jnp.sum(jnp.log(var), axis=-1)
            - 0.5 * self.dim * jnp.log(2 * jnp.pi)
        )
        return log_p, z / var, U

    def component_log_probs_transformed(
        self, coef: ScalarLike, std: ScalarLike, x: Float[Array, " d"]
    ) -> Float[Array, " K"]:
        r"""`log w_k + log N(x; coef mu_k, coef^2 Sigma_k + std^2 I)` for every component."""
        return self._whitened(coef, std, x)[0]

    def log_prob_transformed(self, coef: ScalarLike, std: ScalarLike, x: Float[Array, " d"]):
        """Log-density of `coef * X + std * Z` at `x` (see `transform`)."""
        return jax.nn.logsumexp(self.component_log_probs_transformed(coef, std, x))

    def score_transformed(
        self, coef: ScalarLike, std: ScalarLike, x: Float[Array, " d"]
    ) -> Float[Array, " d"]:
        r"""Score of `coef * X + std * Z` at `x`: $-\sum_k r_k(x) \Sigma_k(t)^{-1}(x - m_k)$."""
        log_p, zv, U = self._whitened(coef, std, x)
        resp = jax.nn.softmax(log_p)
        return -jnp.einsum("k,kij,kj->i", resp, U, zv)

    def component_log_probs(self, x: Float[Array, " d"]) -> Float[Array, " K"]:
        """`log w_k + log N(x; mu_k, Sigma_k)` for every component."""
        return self.component_log_probs_transformed(1.0, 0.0, x)

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """The normalised log-density at one point."""
        return jax.nn.logsumexp(self.component_log_probs(x))

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$\nabla_x \log p(x) = -\sum_k r_k(x)\,\Sigma_k^{-1}(x - \mu_k)$, in closed form."""
        return self.score_transformed(1.0, 0.0, x)

    def responsibilities(self, x: Float[Array, " d"]) -> Float[Array, " K"]:
        """The posterior probability of each component given one point."""
        return jax.nn.softmax(self.component_log_probs(x))

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """`n` exact samples."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)[comp]
        eps = jax.random.normal(k_noise, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, eps)

    def transform(self, coef, std) -> "GaussianMixture":
        r"""The law of `coef * X + std * Z` for `X` from this mixture and `Z ~ N(0, I)`."""
        eye = jnp.eye(self.dim)
        return GaussianMixture(self.weights, coef * self.means, coef**2 * self.covs + std**2 * eye)
