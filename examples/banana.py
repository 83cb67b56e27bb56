"""A plain log-density as a target: Haario's banana (a twisted Gaussian) in any dimension.

    python examples/banana.py
    sdekit sample examples/banana.py:log_prob --set target.dim=2 --sampler pis \\
        --set process.sigma=5.0 --train-iters 500 -n 5000
    sdekit sample examples/banana.py:log_prob --set target.dim=4 --set target.b=0.05 \\
        --sampler smc --set sampler.sigma=10.0

`log_prob(x, b=0.1)` takes one point; sdekit vmaps it. `b` (curvature) has a default, so it
is an option (`--set target.b=...`); the dimension is the option `dim`. The density is
normalised (log Z = 0): the map x -> (x0, x1 + b (x0^2 - 100), x2, ...) has unit Jacobian.
"""

import jax.numpy as jnp
from jax.scipy.stats import norm


def log_prob(x, b=0.1):
    y1 = x[1] + b * (x[0] ** 2 - 100.0)
    return (norm.logpdf(x[0], scale=10.0) + norm.logpdf(y1)
            + jnp.sum(norm.logpdf(x[2:])))


def main() -> None:
    import jax

    import sdekit

    target = sdekit.target_from_log_prob(log_prob, dim=2, log_Z=0.0)
    sampler = sdekit.compose(target, {"name": "pis", "train_iters": 500},
                             process={"name": "pbm", "sigma": 5.0})
    sampler, _ = sdekit.train(sampler, jax.random.PRNGKey(0))
    samples = sampler.sample(jax.random.PRNGKey(1), 5000)
    print(f"log Z-hat = {float(sdekit.log_Z_estimate(samples.log_weights)):.3f} (exact 0)")


if __name__ == "__main__":
    main()
