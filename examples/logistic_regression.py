"""Bayesian logistic regression on scikit-learn's breast-cancer data, as a NumPyro model.

    python examples/logistic_regression.py
    sdekit sample numpyro:examples/logistic_regression.py:model --sampler smc -n 2000

The same density as the registered target `logistic-breast-cancer` (d = 31), written as a
NumPyro model: its log evidence is known from the stored reference run, and the samples
come back as the named site `w`. `data` is a function, so the data set is only loaded
when the model is used; `sdekit sample numpyro:...:model` calls it for the model's
keyword arguments.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def data() -> dict:
    from sdekit_numpyro import breast_cancer_data

    X, y = breast_cancer_data()
    return {"X": jnp.asarray(X), "y": jnp.asarray(y)}


def model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def main(n: int = 2000) -> None:
    import jax

    import sdekit
    from sdekit_numpyro import NumPyroTarget, reference

    target = NumPyroTarget(model, model_kwargs=data())
    sampler = sdekit.compose(target, {"name": "smc", "steps": 200})
    samples = sampler.sample(jax.random.PRNGKey(0), n)
    idata = sdekit.to_arviz(samples, target)
    print(f"log evidence: {idata.attrs['log_Z']:.3f} (reference {reference()['log_Z']:.4f})")
    print("posterior means of the first five coefficients:",
          idata.posterior["w"].mean(("chain", "draw")).values[:5])


if __name__ == "__main__":
    main()
