"""NUTS reference posterior means of eight schools (for tests/test_numpyro.py), run once, stored.

    python benchmarks/eight_schools_reference.py        # writes the JSON

NumPyro's NUTS on the non-centred model of `examples/eight_schools.py` (the centred one
has divergences; both are the same posterior for mu and tau): 4 chains, each 2000 warmup
and 25000 kept draws, PRNG seed 0. The Monte-Carlo standard error of each posterior mean
is its posterior std over the square root of the effective sample size
(`numpyro.diagnostics.effective_sample_size` over the chains).
"""

import datetime
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer import MCMC, NUTS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "plugins" / "sdekit_numpyro" / "data" / "eight_schools_nuts.json"
sys.path.insert(0, str(ROOT / "examples"))

from eight_schools import data, noncentered  # noqa: E402


def main() -> None:
    chains, warmup, draws = 4, 2000, 25_000
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(noncentered), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), **data)
    samples = mcmc.get_samples(group_by_chain=True)
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    sites = {}
    for name in ("mu", "tau"):
        x = np.asarray(samples[name], dtype=np.float64)  # (chains, draws)
        ess = float(effective_sample_size(x))
        sites[name] = {
            "mean": float(x.mean()), "std": float(x.std()), "ess": ess,
            "mcse": float(x.std() / np.sqrt(ess)), "r_hat": float(split_gelman_rubin(x)),
        }
    result = {
        "model": "examples/eight_schools.py:noncentered",
        "method": f"NumPyro NUTS, {chains} chains x ({warmup} warmup + {draws} draws), seed 0",
        "divergences": divergences,
        "sites": sites,
        "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/eight_schools_reference.py",
        "date": datetime.date.today().isoformat(),
    }
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
