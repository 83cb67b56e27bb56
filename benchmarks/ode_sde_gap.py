"""The ODE–SDE gap of a DSM-trained potential net, and closing it with the log-density
Fokker–Planck residual as a regulariser (REPRODUCTIONS.md R1.2).

Protocol (REPRODUCTIONS.md R1.2): blob data; OU `dX = -X dt + dW` (vp with beta = 2,
sigma = 1/sqrt(2)) with T = 5; potential MLP 3x64 Softplus on x and a time embedding
(t/T, log sigma_t and `--time-features` Fourier pairs of log sigma_t); DSM with
t ~ t_min + (T - t_min) Beta(1, 2), plus w_R * mean R_u^2 at the noised points x_t,
w_R in {0, 1}; Adam for 4000 steps at batch 2048 with step decay (`--schedule step`: the
learning rate multiplied by `--decay-factor` at each fraction `--decay-at` of the run;
`--schedule cosine` is `sdekit.TrainOptions`' cosine decay to 10%), gradient norm clipped
at 1 (the `TrainOptions` default); 3000 samples; reverse SDE with 400 Euler steps on a quadratic time grid,
PF-ODE with tsit5 (adaptive, rtol = atol = 1e-5); exact W2 (`sdekit.metrics.w2`);
noise floor = W2 between two independent reverse-SDE sample sets; escaped mass = fraction
of samples with a coordinate |x_i| > 4.

Pass: at w_R = 0, W2(ODE, SDE) >= 1.3 x floor; at w_R = 1, W2(ODE, SDE) <= 1.1 x floor and
>= 30% below the w_R = 0 value; escaped mass < 5%.

    python benchmarks/ode_sde_gap.py --seeds 0 1 2 --tag full   # the protocol's budget
    python benchmarks/ode_sde_gap.py --seeds 0 1 2 --steps 6000 --batch 512 \
        --schedule cosine --tag lr1e-2                                  # the reduced budget
    python benchmarks/ode_sde_gap.py --seeds 0 --weights 0.01 0.1 --steps 6000 \
        --batch 512 --schedule cosine --tag lr1e-2_wsweep

writes benchmarks/results/ode_sde_gap[_TAG].{json,png}. The defaults are the protocol's
budget; on a shared 2-core CPU a reduced run takes about 5 min a seed.
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

import sdekit
from sdekit.metrics import w2
from sdekit_score_models import dataset, sample_ode, sample_sde, score_matching, score_network

RESULTS = Path(__file__).parent / "results"


def ou_process(T: float = 5.0, t_min: float = 1e-4) -> sdekit.AbstractProcess:
    return sdekit.create("process", "vp", beta_min=2.0, beta_max=2.0, sigma=2**-0.5, T=T,
                         t_min=t_min)


class StepDecayOptions(sdekit.TrainOptions):
    """`sdekit.TrainOptions` with a piecewise-constant learning rate: `learning_rate`,
    multiplied by `decay_factor` at each fraction `decay_at` of the `steps`."""

    decay_at: tuple[float, ...] = eqx.field(static=True, default=(0.5, 0.75))
    decay_factor: float = eqx.field(static=True, default=0.3)

    def __check_init__(self):
        if not all(0 < f < 1 for f in self.decay_at):
            raise ValueError(f"decay_at must be fractions in (0, 1), got {self.decay_at!r}")
        if not self.decay_factor > 0:
            raise ValueError(f"decay_factor must be positive, got {self.decay_factor!r}")

    def optimizer(self) -> optax.GradientTransformation:
        bounds = {int(f * self.steps): self.decay_factor for f in self.decay_at}
        schedule = optax.piecewise_constant_schedule(self.learning_rate, bounds)
        clip = [] if self.grad_clip is None else [optax.clip_by_global_norm(self.grad_clip)]
        return optax.chain(*clip, optax.adam(schedule))


def escaped(x: np.ndarray, bound: float = 4.0) -> float:
    return float(np.mean(~np.all(np.abs(x) <= bound, axis=1)))


def run(seed: int, weight: float, args) -> dict:
    process = ou_process()
    keys = dict(zip(("data", "init", "train", "sde", "sde2", "ode", "ref", "eval"),
                    jax.random.split(jax.random.PRNGKey(seed), 8)))
    data = dataset("blob", keys["data"], args.n_data)
    net = score_network(2, process, kind="potential", width=64, depth=3, activation="softplus",
                        time_features=args.time_features, key=keys["init"])
    model = score_matching(data, net, batch=args.batch, steps=args.steps, learning_rate=args.lr,
                           time_distribution="beta", fp_weight=weight, chunk=100)
    if args.schedule == "step":
        o = model.train_options
        step_options = StepDecayOptions(
            steps=o.steps, learning_rate=o.learning_rate, grad_clip=o.grad_clip, chunk=o.chunk,
            decay_at=tuple(args.decay_at), decay_factor=args.decay_factor)
        model = eqx.tree_at(lambda m: m.train_options, model, step_options)
    t0 = time.perf_counter()
    trained, history = sdekit.train(model, keys["train"], progress=False)
    t1 = time.perf_counter()
    net = trained.net
    n = args.n
    sde = np.asarray(sample_sde(net, process, keys["sde"], n, 2, steps=400, spacing="quadratic"))
    sde2 = np.asarray(sample_sde(net, process, keys["sde2"], n, 2, steps=400, spacing="quadratic"))
    ode = np.asarray(sample_ode(net, process, keys["ode"], n, 2))
    ref = np.asarray(dataset("blob", keys["ref"], n))
    t2 = time.perf_counter()
    held = score_matching(ref, net, batch=n, fp_weight=0.0)
    losses = eqx_losses(held, keys["eval"])
    out = {
        "seed": seed, "w_R": weight,
        "w2_ode_data": w2(ode, ref), "w2_sde_data": w2(sde, ref),
        "w2_ode_sde": w2(ode, sde), "noise_floor": w2(sde, sde2),
        "escaped_ode": escaped(ode), "escaped_sde": escaped(sde),
        "dsm_train_last100": float(np.nanmean(history["dsm"][-100:])),
        **losses,
        "train_seconds": t1 - t0, "sample_seconds": t2 - t1,
    }
    out["gap_over_floor"] = out["w2_ode_sde"] / out["noise_floor"]
    return out | {"_samples": {"sde": sde, "ode": ode, "ref": ref}}


def eqx_losses(model, key) -> dict:
    """Held-out DSM loss (4096 draws) and mean squared log-FP residual (1024 noised points)."""
    import equinox as eqx

    @eqx.filter_jit
    def f(m, k):
        k1, k2, k3, k4, k5 = jax.random.split(k, 5)
        dsm = m.losses(k1, 4096)["dsm"]
        x0 = m.data[jax.random.randint(k2, (1024,), 0, m.data.shape[0])]
        t = m.sample_times(k3, 1024)
        a, s = jax.vmap(m.process.marginal)(t)
        xt = a[:, None] * x0 + s[:, None] * jax.random.normal(k4, x0.shape)
        return dsm, m.fp_loss(k5, t, xt)

    dsm, fp = f(model, key)
    return {"dsm_held_out": float(dsm), "fp_residual_held_out": float(fp)}


def verdict(rows: list[dict]) -> dict:
    by = {(r["seed"], r["w_R"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    checks = []
    for s in seeds:
        a, b = by[(s, 0.0)], by[(s, 1.0)]
        checks.append({
            "seed": s,
            "w0_gap_ge_1.3_floor": a["w2_ode_sde"] >= 1.3 * a["noise_floor"],
            "w1_gap_le_1.1_floor": b["w2_ode_sde"] <= 1.1 * b["noise_floor"],
            "w1_gap_30pct_below_w0": b["w2_ode_sde"] <= 0.7 * a["w2_ode_sde"],
            "escaped_lt_5pct": max(a["escaped_ode"], a["escaped_sde"], b["escaped_ode"],
                                   b["escaped_sde"]) < 0.05,
            "sde_w2_data_change": b["w2_sde_data"] - a["w2_sde_data"],
            "ode_w2_data_change": b["w2_ode_data"] - a["w2_ode_data"],
        })
    return {"per_seed": checks,
            "all_hold": all(all(v for k, v in c.items() if isinstance(v, bool)) for c in checks)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in rows if r["seed"] == rows[0]["seed"]]
    fig, axes = plt.subplots(len(first), 3, figsize=(11, 3.7 * len(first)), squeeze=False)
    for i, r in enumerate(first):
        for j, name in enumerate(("ref", "sde", "ode")):
            x = r["_samples"][name]
            ax = axes[i, j]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_xlim(-4.5, 4.5)
            ax.set_ylim(-4.5, 4.5)
            ax.set_aspect("equal")
            label = {"ref": "data", "sde": "reverse SDE", "ode": "PF-ODE"}[name]
            extra = "" if name == "ref" else f", W2 to data {r[f'w2_{name}_data']:.3f}"
            ax.set_title(f"w_R={r['w_R']:g}: {label}{extra}", fontsize=9)
        axes[i, 0].set_ylabel(f"W2(ODE,SDE)={r['w2_ode_sde']:.3f}, floor {r['noise_floor']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-2,
                   help="peak Adam learning rate (1e-3 and 3e-3, with cosine decay at batch 512, "
                        "leave the modes unlearned after 3000 steps)")
    p.add_argument("--schedule", choices=("step", "cosine"), default="step",
                   help="step decay (the protocol's) or cosine decay to 10%% of --lr")
    p.add_argument("--decay-at", type=float, nargs="+", default=[0.5, 0.75],
                   help="fractions of --steps where the step schedule decays")
    p.add_argument("--decay-factor", type=float, default=0.3,
                   help="the step schedule's factor at each --decay-at (0.3 twice: ends at "
                        "0.09 x --lr, as the cosine's 10%%)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--n-data", type=int, default=20_000)
    p.add_argument("--time-features", type=int, default=8)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    rows = []
    header = ("seed", "w_R", "W2(ODE,data)", "W2(SDE,data)", "W2(ODE,SDE)", "floor", "gap/floor",
              "esc ODE", "esc SDE", "DSM held", "FP res held", "train s")
    print("  ".join(f"{h:>12}" for h in header), flush=True)
    for seed in args.seeds:
        for weight in args.weights:
            r = run(seed, weight, args)
            rows.append(r)
            vals = (r["seed"], r["w_R"], r["w2_ode_data"], r["w2_sde_data"], r["w2_ode_sde"],
                    r["noise_floor"], r["gap_over_floor"], r["escaped_ode"], r["escaped_sde"],
                    r["dsm_held_out"], r["fp_residual_held_out"], r["train_seconds"])
            print("  ".join(f"{v:>12.4g}" for v in vals), flush=True)
    result = {"protocol": {k: v for k, v in vars(args).items() if k != "out"}, "rows": [{k: v for k, v in r.items() if k != "_samples"}
                                                for r in rows]}
    if set(args.weights) >= {0.0, 1.0}:
        result["verdict"] = verdict(rows)
        print(json.dumps(result["verdict"], indent=1))
    args.out.mkdir(exist_ok=True, parents=True)
    stem = "ode_sde_gap" + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")


if __name__ == "__main__":
    main()
