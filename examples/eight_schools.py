"""Eight schools (Rubin 1981), centred and non-centred, sampled with sdekit.

    python examples/eight_schools.py                      # both models, from Python
    sdekit sample numpyro:examples/eight_schools.py:noncentered --sampler pis \\
        --train-iters 1500 --set process.sigma=2.0 -n 20000

The models take the data as keyword arguments; `data` below is what `sdekit sample
numpyro:examples/eight_schools.py:MODEL` passes them (see docs/numpyro.md). The two models
are the same distribution for (mu, tau, theta), so they have the same evidence; the
non-centred one is the easier geometry.
"""

import numpy as np
import numpyro
import numpyro.distributions as dist

data = {
    "J": 8,
    "y": np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]),
    "sigma": np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]),
}


def centered(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def noncentered(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def main(train_iters: int = 1500, n: int = 20_000) -> None:
    import jax

    import sdekit
    from sdekit_numpyro import NumPyroTarget

    for model in (noncentered, centered):
        target = NumPyroTarget(model, model_kwargs=data)
        sampler = sdekit.compose(
            target, {"name": "pis", "train_iters": train_iters},
            process={"name": "pbm", "sigma": 2.0},
        )
        sampler, _ = sdekit.train(sampler, jax.random.PRNGKey(0))
        samples = sampler.sample(jax.random.PRNGKey(1), n)
        idata = sdekit.to_arviz(samples, target, key=jax.random.PRNGKey(2))
        print(f"{model.__name__}: log evidence {idata.attrs['log_Z']:.3f}, "
              f"ESS fraction {idata.attrs['ess']:.3f}")
        w = jax.nn.softmax(samples.log_weights)
        sites = target.sites(samples.x)
        for name in ("mu", "tau"):
            print(f"  E[{name}] = {float(w @ sites[name]):.3f}")


if __name__ == "__main__":
    main()
