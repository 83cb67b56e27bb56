import jax
import jax.numpy as jnp
import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class GaussianMixture(eqx.Module):
    r"""A normalised Gaussian mixture $\sum_k w_k \mathcal N(\mu_k, \Sigma_k)$.

    It is closed under the Gaussian transitions of every built-in process, so it gives
    exact marginals $p_t$ and exact scores $\nabla \log p_t$: the ground truth of the tests.

    **Arguments:**

    - `weights`: `(K,)` non-negative, normalised on construction.
    - `means`: `(K, d)`.
    - `covs`: `(K, d, d)` symmetric positive definite.
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
        return self.means.shape[-1]

    def component_log_probs(self, x: Float[Array, " d"]) -> Float[Array, " K"]:
        """`log w_k + log N(x; mu_k, Sigma_k)` for every component."""
        chol = jnp.linalg.cholesky(self.covs)
        diff = x - self.means
        z = jax.vmap(lambda c, r: jax.scipy.linalg.solve_triangular(c, r, lower=True))(chol, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return (
            jnp.log(self.weights)
            - 0.5 * jnp.sum(z**2, axis=-1)
            - log_det
            - 0.5 * self.dim * jnp.log(2 * jnp.pi)
        )

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return jax.nn.logsumexp(self.component_log_probs(x))

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$\nabla_x \log p(x)$, in closed form."""
        resp = jax.nn.softmax(self.component_log_probs(x))
        prec_diff = jnp.linalg.solve(self.covs, (self.means - x)[..., None])[..., 0]
        return resp @ prec_diff

    def responsibilities(self, x: Float[Array, " d"]) -> Float[Array, " K"]:
        return jax.nn.softmax(self.component_log_probs(x))

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)[comp]
        eps = jax.random.normal(k_noise, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, eps)

    def transform(self, coef, std) -> "GaussianMixture":
        r"""The law of `coef * X + std * Z` for `X` from this mixture and `Z ~ N(0, I)`."""
        eye = jnp.eye(self.dim)
        return GaussianMixture(self.weights, coef * self.means, coef**2 * self.covs + std**2 * eye)
