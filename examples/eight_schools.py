"""Eight schools (Rubin 1981), centred and non-centred, sampled with sdekit.

    python examples/eight_schools.py                      # both models, from Python
    sdekit sample numpyro:examples/eight_schools.py:noncentered --sampler smc \\
        --set sampler.sigma=3.0 -n 5000
    sdekit sample numpyro:examples/eight_schools.py:centered --sampler smc \\
        --set sampler.sigma=3.0 -n 5000

The models take the data as keyword arguments; `data` below is what `sdekit sample
numpyro:examples/eight_schools.py:MODEL` passes them (see docs/numpyro.md). The two models
are the same distribution for (mu, tau, theta), so they have the same evidence; the
non-centred one is the easier geometry. `smc` (tempered SMC, montecarlo plugin) needs no
training; a trained diffusion sampler works the same way (`--sampler pis --train-iters
2000 --set process.sigma=2.0`).
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


def main(n: int = 5000) -> None:
    import jax

    import sdekit
    from sdekit_numpyro import NumPyroTarget

    for model in (noncentered, centered):
        target = NumPyroTarget(model, model_kwargs=data)
        sampler = sdekit.compose(target, {"name": "smc", "sigma": 3.0})
        samples = sampler.sample(jax.random.PRNGKey(0), n)
        idata = sdekit.to_arviz(samples, target)  # posterior: mu, tau, theta(, theta_tilde)
        print(f"{model.__name__}: log evidence {idata.attrs['log_Z']:.3f}, posterior means "
              + ", ".join(f"{v} {float(np.mean(idata.posterior[v])):.2f}" for v in ("mu", "tau")))


if __name__ == "__main__":
    main()
