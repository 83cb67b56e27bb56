"""Smoothing (VP) versus pinning (PBM) at equal budget, as the dimension grows (REPRODUCTIONS.md R2.3).

    python benchmarks/smoothing_vs_pinning.py                 # the full grid (see below)
    python benchmarks/smoothing_vs_pinning.py --dims 2 5 10 20 50 --seeds 0 --steps 2000
    python benchmarks/smoothing_vs_pinning.py --half samplers --dims 2 10 --train-iters 300
    python benchmarks/smoothing_vs_pinning.py --table         # the stored results

Two halves, each on funnel-d and a 10-component isotropic Gaussian mixture in d dimensions
(means uniform in [-5, 5]^d, variances uniform in [0.2, 1], one fixed draw), for d in `--dims`:

- `dsm`: the score learned by denoising score matching from `--n-data` exact samples under
  VP (`vp`, sigma 1, linear beta 0.1..20) and under PBM (`pbm`, sigma `--pbm-sigma`),
  t in [1e-3, T(1 - 1e-6)], the same network (score net `--width` x `--depth`, softplus,
  `input_scale="marginal"`, which is the identity for VP) and the same budget (`--steps`
  Adam steps, batch `--batch`, peak lr `--lr`, cosine decay); sampled by the reverse SDE
  (`--sde-steps` Euler steps, each process's default time grid).
- `samplers`: the same two processes as samplers of the unnormalised density, DDS (VP) and
  PIS (PBM), with the same controller (`pis-grad`, width `--width`, depth `--depth`) and
  budget (`--train-iters` iterations of `--sampler-batch` trajectories, `--sampler-steps`
  time steps).

Each row: unbiased MMD² (median-heuristic bandwidth) and sliced W2 of `-n` samples against
as many exact ones, and the noise floor: the same between two independent exact sets (MMD²:
RMS over 2 pairs). A process *wins* a (target, d, metric) cell when its mean over seeds is
lower by more than the floor; otherwise the cell is a tie. PBM rows with `--pbm-sigma`
other than 1 are labelled `pbm-s<sigma>` and stored beside those with sigma 1.

The full grid of REPRODUCTIONS.md (3 seeds, both halves, d up to 50, networks 2x128, several
thousand steps) is the default; it is far beyond a shared 2-core CPU, so the stored results
state the reduced budget they were run at (`config` of each row). Results are merged into
`benchmarks/results/smoothing_vs_pinning.json` keyed by (half, target, d, process,
seed); the PNG is redrawn from all stored rows.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit.metrics import mmd, sliced_w2

RESULTS = Path(__file__).parent / "results"
NAME = "smoothing_vs_pinning"
TARGETS = ("funnel", "gmm10")
HALVES = ("dsm", "samplers")
#: process -> (sampler of the `samplers` half, process options besides sigma)
PROCESSES = {"vp": "dds", "pbm": "pis"}


def make_target(name: str, dim: int):
    """funnel-d, or the 10-component isotropic mixture in d dimensions (fixed means and variances)."""
    if name == "funnel":
        return sdekit.create("target", "funnel", dim=dim)
    if name != "gmm10":
        raise ValueError(f"target must be one of {TARGETS}, got {name!r}")
    k1, k2 = jax.random.split(jax.random.PRNGKey(10))
    means = jax.random.uniform(k1, (10, dim), minval=-5.0, maxval=5.0)
    variances = jax.random.uniform(k2, (10,), minval=0.2, maxval=1.0)
    return sdekit.create("target", "gmm", means=np.asarray(means), covs=np.asarray(variances))


def process_label(name: str, pbm_sigma: float) -> str:
    """`vp`, `pbm` (sigma 1, the VP's stationary std) or `pbm-s<sigma>`."""
    return name if name == "vp" or pbm_sigma == 1.0 else f"pbm-s{pbm_sigma:g}"


def make_process(name: str, pbm_sigma: float):
    if name == "vp":
        return sdekit.create("process", "vp", sigma=1.0, t_min=1e-3)
    return sdekit.create("process", "pbm", sigma=pbm_sigma, t_min=1e-3)


def quality(x: jax.Array, target, key) -> dict:
    """MMD² and sliced W2 of `x` against exact samples, the floor, and the non-finite count."""
    n = x.shape[0]
    finite = jnp.all(jnp.isfinite(x), axis=1)
    x = x[finite]
    ref = target.sample(jax.random.fold_in(key, 0), x.shape[0])
    k_proj = jax.random.fold_in(key, 3)
    out = {"mmd": float(mmd(x, ref)), "sliced_w2": float(sliced_w2(x, ref, k_proj)),
           "n_nonfinite": int(n - x.shape[0])}
    floors = [float(mmd(target.sample(jax.random.fold_in(key, 10 + 2 * i), n),
                        target.sample(jax.random.fold_in(key, 11 + 2 * i), n))) for i in range(2)]
    out["mmd_floor"] = float(np.sqrt(np.mean(np.square(floors))))
    out["sliced_w2_floor"] = float(sliced_w2(target.sample(jax.random.fold_in(key, 10), n),
                                             target.sample(jax.random.fold_in(key, 11), n), k_proj))
    return out


def run_dsm(target_name: str, dim: int, process_name: str, seed: int, args) -> dict:
    import sdekit_score_models as sm

    target = make_target(target_name, dim)
    process = make_process(process_name, args.pbm_sigma)
    key = jax.random.key(seed)
    net = sm.score_network(dim, process, kind="score", width=args.width, depth=args.depth,
                           input_scale="marginal", key=jax.random.PRNGKey(1000 + seed))
    model = sm.score_matching(target, net, n_data=args.n_data, data_key=jax.random.PRNGKey(2000 + seed),
                              batch=args.batch, steps=args.steps, learning_rate=args.lr,
                              chunk=min(args.steps, 500))
    t0 = time.perf_counter()
    trained, history = sdekit.train(model, jax.random.fold_in(key, 0), progress=False)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = sm.sample_sde(trained.net, process, jax.random.fold_in(key, 1), args.n, dim, steps=args.sde_steps,
                      spacing=process.default_spacing)
    x = jax.block_until_ready(x)
    return {
        "half": "dsm", "target": target_name, "dim": dim, "process": process_label(process_name, args.pbm_sigma),
        "seed": seed,
        "train_seconds": train_seconds, "sample_seconds": time.perf_counter() - t0,
        "dsm_final": float(np.mean(np.asarray(history["dsm"])[-50:])),
        **quality(x, target, jax.random.fold_in(key, 2)),
        "config": {"n_data": args.n_data, "width": args.width, "depth": args.depth, "steps": args.steps,
                   "batch": args.batch, "lr": args.lr, "sde_steps": args.sde_steps, "n": args.n,
                   "pbm_sigma": args.pbm_sigma},
    }


def run_sampler(target_name: str, dim: int, process_name: str, seed: int, args) -> dict:
    target = make_target(target_name, dim)
    sigma = 1.0 if process_name == "vp" else args.pbm_sigma
    sampler = sdekit.compose(
        target,
        {"name": PROCESSES[process_name], "steps": args.sampler_steps, "train_iters": args.train_iters,
         "batch": args.sampler_batch},
        process={"name": process_name, "sigma": sigma},
        controller={"name": "pis-grad", "width": args.width, "depth": args.depth, "seed": seed},
    )
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    trained, _ = sdekit.train(sampler, jax.random.fold_in(key, 0), progress=False)
    train_seconds = time.perf_counter() - t0
    samples = jax.block_until_ready(trained.sample(jax.random.fold_in(key, 1), args.n))
    log_z = float(sdekit.log_Z_estimate(samples.log_weights))
    return {
        "half": "samplers", "target": target_name, "dim": dim, "process": process_label(process_name, args.pbm_sigma),
        "sampler": PROCESSES[process_name], "seed": seed, "train_seconds": train_seconds,
        "log_Z_error": log_z - float(target.log_Z),
        **quality(samples.x, target, jax.random.fold_in(key, 2)),
        "config": {"train_iters": args.train_iters, "batch": args.sampler_batch, "steps": args.sampler_steps,
                   "width": args.width, "depth": args.depth, "n": args.n, "pbm_sigma": args.pbm_sigma},
    }


def _key(r: dict) -> str:
    return f"{r['half']}/{r['target']}/{r['dim']}/{r['process']}/{r['seed']}"


def load() -> list[dict]:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def summarise(rows: list[dict]) -> list[dict]:
    """Per (half, target, d, process): means over seeds, the floors, and against VP the winner per metric."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["half"], r["target"], r["dim"]), {}).setdefault(r["process"], []).append(r)
    out = []
    for (half, target, dim), by in sorted(groups.items()):
        means = {p: {m: float(np.mean([r[m] for r in rs])) for m in ("mmd", "sliced_w2", "mmd_floor",
                                                                     "sliced_w2_floor")}
                 for p, rs in by.items()}
        for proc in sorted(by, key=lambda p: (p != "vp", p)):
            cell = {"half": half, "target": target, "dim": dim, "process": proc, "seeds": len(by[proc]),
                    **means[proc]}
            if proc != "vp" and "vp" in means:
                for m in ("mmd", "sliced_w2"):
                    diff = means["vp"][m] - means[proc][m]
                    floor = max(means["vp"][f"{m}_floor"], means[proc][f"{m}_floor"])
                    cell[f"{m}_vs_vp"] = "tie" if abs(diff) <= floor else (proc if diff > 0 else "vp")
            out.append(cell)
    return out


def table(cells: list[dict]) -> str:
    head = (f"{'half':<9}{'target':<8}{'d':>4} {'process':<9}{'seeds':>5} | {'MMD²':>9} {'floor':>8} "
            f"{'wins':>9} | {'SW2':>8} {'floor':>7} {'wins':>9}")
    lines = [head, "-" * len(head)]
    for c in cells:
        lines.append(
            f"{c['half']:<9}{c['target']:<8}{c['dim']:>4} {c['process']:<9}{c['seeds']:>5} | {c['mmd']:>9.4f} "
            f"{c['mmd_floor']:>8.4f} {c.get('mmd_vs_vp', ''):>9} | {c['sliced_w2']:>8.3f} "
            f"{c['sliced_w2_floor']:>7.3f} {c.get('sliced_w2_vs_vp', ''):>9}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, len(TARGETS), figsize=(5.5 * len(TARGETS), 7.5), squeeze=False)
    procs = sorted({(r["half"], r["process"]) for r in rows}, key=lambda hp: (hp[0], hp[1] != "vp", hp[1]))
    names = {"dsm": {"vp": "VP (DSM)"}, "samplers": {"vp": "DDS (VP)"}}
    for j, target in enumerate(TARGETS):
        for i, metric in enumerate(("mmd", "sliced_w2")):
            ax = axes[i, j]
            floors: dict[int, list[float]] = {}
            for k, (half, proc) in enumerate(procs):
                rs = [r for r in rows if r["target"] == target and r["half"] == half and r["process"] == proc]
                if not rs:
                    continue
                label = names[half].get(proc, f"{proc.upper()} ({'DSM' if half == 'dsm' else 'PIS'})")
                dims = sorted({r["dim"] for r in rs})
                vals = [[r[metric] for r in rs if r["dim"] == d] for d in dims]
                mean = np.array([np.mean(v) for v in vals])
                lo, hi = np.array([np.min(v) for v in vals]), np.array([np.max(v) for v in vals])
                ax.errorbar(dims, mean, yerr=[mean - lo, hi - mean], color=f"C{k}",
                            ls="-" if half == "dsm" else ":", marker="o", ms=4, capsize=2, label=label)
                for r in rs:
                    floors.setdefault(r["dim"], []).append(r[f"{metric}_floor"])
            if floors:
                dims = sorted(floors)
                ax.plot(dims, [np.mean(floors[d]) for d in dims], "k--", lw=1, label="noise floor")
            ax.set_xscale("log")
            all_dims = sorted({r["dim"] for r in rows})
            ax.set_xticks(all_dims, [str(d) for d in all_dims])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_yscale("symlog" if metric == "mmd" else "log", **({"linthresh": 1e-3} if metric == "mmd" else {}))
            ax.set_xlabel("d")
            ax.set_title(f"{target}: {'MMD²' if metric == 'mmd' else 'sliced W2'}")
            ax.legend(fontsize=8)
    fig.suptitle("Smoothing (VP) vs pinning (PBM), equal network and budget (min..max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--half", choices=(*HALVES, "both"), default="both")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10, 20, 50])
    p.add_argument("--processes", nargs="+", choices=tuple(PROCESSES), default=list(PROCESSES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-n", type=int, default=2000, help="samples per evaluation")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--pbm-sigma", type=float, default=1.0)
    p.add_argument("--n-data", type=int, default=20_000, help="DSM: exact samples learned from")
    p.add_argument("--steps", type=int, default=10_000, help="DSM: Adam steps")
    p.add_argument("--batch", type=int, default=512, help="DSM: batch")
    p.add_argument("--lr", type=float, default=3e-3, help="DSM: peak learning rate")
    p.add_argument("--sde-steps", type=int, default=500, help="DSM: reverse-SDE Euler steps")
    p.add_argument("--train-iters", type=int, default=2000, help="samplers: training iterations")
    p.add_argument("--sampler-batch", type=int, default=256, help="samplers: trajectories per iteration")
    p.add_argument("--sampler-steps", type=int, default=128, help="samplers: time steps")
    p.add_argument("--table", action="store_true", help="print the stored results and redraw the plot")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args()
    RESULTS = args.out
    RESULTS.mkdir(exist_ok=True, parents=True)
    stored = {_key(r): r for r in load()}
    if not args.table:
        halves = HALVES if args.half == "both" else (args.half,)
        for half in halves:
            for target in args.targets:
                for dim in args.dims:
                    for proc in args.processes:
                        for seed in args.seeds:
                            fn = run_dsm if half == "dsm" else run_sampler
                            r = fn(target, dim, proc, seed, args)
                            stored[_key(r)] = r
                            print(f"{_key(r):<28} MMD² {r['mmd']:.4f} (floor {r['mmd_floor']:.4f})  "
                                  f"SW2 {r['sliced_w2']:.3f} (floor {r['sliced_w2_floor']:.3f})  "
                                  f"train {r['train_seconds']:.0f} s", flush=True)
                            (RESULTS / f"{NAME}.json").write_text(json.dumps(
                                {"rows": list(stored.values()), "summary": summarise(list(stored.values()))},
                                indent=2) + "\n")
    rows = list(stored.values())
    if not rows:
        print("no stored results")
        return
    cells = summarise(rows)
    print(table(cells))
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"rows": rows, "summary": cells}, indent=2) + "\n")
    plot(rows, RESULTS / f"{NAME}.png")
    print(f"wrote {RESULTS}/{NAME}.json and .png")


if __name__ == "__main__":
    main()
