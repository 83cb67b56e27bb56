"""The score Fokker–Planck residual as a diagnostic of a DSM-trained model, and fine-tuning
with it as a regulariser (REPRODUCTIONS.md R1.3, in the FP-Diffusion form).

Set-up: the blob data set as its exact Gaussian mixture (`gmm` target: 9 components, means
0.65 (+-2, +-2), (0, 0), (+-4, 0), (0, +-4), covariance 0.2 * 0.65^2 I), so the exact score
of every marginal is known; OU `dX = -X dt + dW` (vp, beta = 2, sigma = 1/sqrt(2)), T = 5,
t_min = 1e-3; a direct score net (3x64 Softplus, output divided by sigma_t). DSM training
(`--steps`), then two fine-tunings from that model of `--finetune` steps each: plain DSM
(the control) and DSM + w * mean ||R_s||^2 at the noised points (w from `--weights`).

Residual E_{x ~ p_t} ||R_s(t, x)||^2 is measured at exact samples of p_t in four time
bins (t log-uniform in each); the regulariser's own quantity E sigma_t^p ||R_s||^2 (t from
the training distribution, p = `--sigma-power`: R_s grows like sigma_t^-3 as t -> 0, so
p = 6 weighs all times alike) and the DSM loss on held-out exact draws.

Pass: the DSM-trained model's residual is >= 10x the exact score's (float32) in the
smallest-t bin; fine-tuning lowers the weighted residual >= 3x (against the control
fine-tuned for as long without it) while the DSM loss rises by <= 10%.

    python benchmarks/score_fp_residual.py --seed 1 --weights 1 10 100

stores the seed's result in benchmarks/results/score_fp_residual.json (`seeds`, merged
with the seeds already there) with `all_seeds`: whether each claim holds on every stored
seed; the figure is score_fp_residual.png for seed 0, ..._seed{N}.png for others.
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit.fokker_planck import score_fp_residual
from sdekit_score_models import score_matching, score_network

RESULTS = Path(__file__).parent / "results"
BINS = ((1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0), (1.0, 5.0))
BLOB_MEANS = 0.65 * np.array(
    [[2, 2], [2, -2], [-2, 2], [-2, -2], [0, 0], [4, 0], [-4, 0], [0, 4], [0, -4]], float
)


def setup():
    target = sdekit.create("target", "gmm", means=BLOB_MEANS.tolist(), covs=0.2 * 0.65**2)
    process = sdekit.create("process", "vp", beta_min=2.0, beta_max=2.0, sigma=2**-0.5, T=5.0,
                            t_min=1e-3)
    exact = sdekit.create("score", "exact", target=target, process=process)
    return target, process, exact


@eqx.filter_jit
def residual_by_bin(score, process, target, key, n: int = 512):
    """E ||R_s||^2 at exact samples of p_t, t log-uniform in each bin; and over all bins."""
    out = []
    for i, (lo, hi) in enumerate(BINS):
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
        t = jnp.exp(jax.random.uniform(k1, (n,), minval=np.log(lo), maxval=np.log(hi)))
        a, s = jax.vmap(process.marginal)(t)
        x = a[:, None] * target.sample(k2, n) + s[:, None] * jax.random.normal(k3, (n, 2))
        r = jax.vmap(lambda t, x: score_fp_residual(score, process, t, x)[0])(t, x)
        out.append(jnp.mean(jnp.sum(r**2, -1)))
    return jnp.stack(out)


@eqx.filter_jit
def held_out_losses(model, key):
    """DSM loss (16384 draws) and the regulariser's own quantity, E sigma_t^p ||R_s||^2 at
    2048 noised points (t from the training distribution)."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    dsm = model.losses(k1, 16384)["dsm"]
    x0 = model.data[jax.random.randint(k2, (2048,), 0, model.data.shape[0])]
    t = model.sample_times(k3, 2048)
    a, s = jax.vmap(model.process.marginal)(t)
    xt = a[:, None] * x0 + s[:, None] * jax.random.normal(k4, x0.shape)
    return dsm, model.fp_loss(k5, t, xt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--finetune", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--fp-batch", type=int, default=128)
    p.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--sigma-power", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    target, process, exact = setup()
    keys = dict(zip(("data", "init", "train", "tune", "eval", "res", "held"),
                    jax.random.split(jax.random.PRNGKey(args.seed), 7)))
    data = target.sample(keys["data"], 20_000)
    net = score_network(2, process, kind="score", width=64, depth=3, activation="softplus",
                        key=keys["init"])
    common = dict(batch=args.batch, time_distribution="beta", learning_rate=args.lr, chunk=100)
    t0 = time.perf_counter()
    trained, _ = sdekit.train(score_matching(data, net, steps=args.steps, **common), keys["train"],
                              progress=False)
    print(f"DSM training: {time.perf_counter() - t0:.0f} s", flush=True)
    held = target.sample(keys["held"], 20_000)

    def measure(name, net, seconds=None):
        res = np.asarray(residual_by_bin(net, process, target, keys["res"]))
        evaluation = score_matching(held, net, batch=16384, time_distribution="beta",
                                    fp_sigma_power=args.sigma_power)
        loss, weighted = map(float, held_out_losses(evaluation, keys["eval"]))
        row = {"model": name, "residual_by_bin": res.tolist(), "residual_weighted": weighted,
               "dsm_held_out": loss, "seconds": seconds}
        print(f"{name:>24}  " + "  ".join(f"{v:>11.4g}" for v in res)
              + f"  {weighted:>11.4g}  {loss:>9.5f}", flush=True)
        return row

    print(f"{'model':>24}  " + "  ".join(f"{f'R^2 t~[{lo:g},{hi:g}]':>11}" for lo, hi in BINS)
          + f"  {'s^p R^2':>11}  {'DSM held':>9}")
    rows = [measure("exact score", exact), measure("DSM", trained.net)]
    tune = dict(common, steps=args.finetune, learning_rate=3e-4, fp_batch=args.fp_batch,
                fp_sigma_power=args.sigma_power)
    for w in (0.0, *args.weights):
        t0 = time.perf_counter()
        tuned, _ = sdekit.train(score_matching(data, trained.net, fp_weight=w, **tune),
                                keys["tune"], progress=False)
        rows.append(measure(f"fine-tuned w={w:g}", tuned.net, time.perf_counter() - t0))
    by = {r["model"]: r for r in rows}
    base = by["DSM"]
    control = by["fine-tuned w=0"]
    verdict = {
        "dsm_residual_over_exact_smallest_t": base["residual_by_bin"][0]
        / max(by["exact score"]["residual_by_bin"][0], 1e-30),
        "per_weight": {},
    }
    for w in args.weights:
        r = by[f"fine-tuned w={w:g}"]
        verdict["per_weight"][f"{w:g}"] = {
            "residual_reduction_vs_dsm": base["residual_weighted"] / r["residual_weighted"],
            "residual_reduction_vs_control": control["residual_weighted"] / r["residual_weighted"],
            "residual_reduction_by_bin_vs_control": (
                np.array(control["residual_by_bin"]) / np.array(r["residual_by_bin"])).tolist(),
            "dsm_rise_vs_dsm": r["dsm_held_out"] / base["dsm_held_out"] - 1,
            "dsm_rise_vs_control": r["dsm_held_out"] / control["dsm_held_out"] - 1,
        }
    verdict["diagnostic_holds"] = verdict["dsm_residual_over_exact_smallest_t"] >= 10
    verdict["regulariser_holds_for"] = [
        w for w, v in verdict["per_weight"].items()
        if v["residual_reduction_vs_control"] >= 3 and v["dsm_rise_vs_control"] <= 0.10
    ]
    print(json.dumps(verdict, indent=1))
    args.out.mkdir(exist_ok=True, parents=True)
    protocol = {k: v for k, v in vars(args).items() if k != "out"}
    out = merge(load(args.out), {"protocol": protocol, "bins": BINS, "rows": rows, "verdict": verdict})
    (args.out / "score_fp_residual.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["all_seeds"], indent=1))
    plot(rows, args.out / ("score_fp_residual.png" if args.seed == 0 else f"score_fp_residual_seed{args.seed}.png"))
    print(f"wrote {args.out}/score_fp_residual.json and the PNG of seed {args.seed}")


def load(folder: Path = RESULTS) -> dict:
    """The results stored in `folder`, `{"seeds": {seed: result}, "all_seeds": ...}` (no seeds when there is none)."""
    path = folder / "score_fp_residual.json"
    return json.loads(path.read_text()) if path.exists() else {"seeds": {}}


def merge(stored: dict, result: dict) -> dict:
    """`result` stored under its seed, and `all_seeds`: whether each claim held on every stored seed."""
    seeds = {**stored["seeds"], str(result["protocol"]["seed"]): result}
    weights = sorted({w for r in seeds.values() for w in r["verdict"]["per_weight"]}, key=float)
    summary = {
        "seeds": sorted(seeds, key=int),
        "diagnostic_holds": all(r["verdict"]["diagnostic_holds"] for r in seeds.values()),
        "dsm_residual_over_exact_smallest_t": {k: r["verdict"]["dsm_residual_over_exact_smallest_t"]
                                               for k, r in seeds.items()},
        "regulariser_holds_for_every_seed": [
            w for w in weights
            if all(w in r["verdict"]["regulariser_holds_for"] for r in seeds.values())
        ],
        "per_weight": {
            w: {k: {m: r["verdict"]["per_weight"][w][m] for m in ("residual_reduction_vs_control",
                                                               "dsm_rise_vs_control")}
                for k, r in seeds.items() if w in r["verdict"]["per_weight"]}
            for w in weights
        },
    }
    return {"seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0]))), "all_seeds": summary}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    mids = [np.sqrt(lo * hi) for lo, hi in BINS]
    for r in rows:
        ax.loglog(mids, np.maximum(r["residual_by_bin"], 1e-12), "o-",
                  label=f"{r['model']} (DSM {r['dsm_held_out']:.4f})")
    ax.set_xlabel("t (bin centre)")
    ax.set_ylabel("E ||R_s||^2 at x ~ p_t")
    ax.set_title("Score Fokker-Planck residual, blob under OU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
