"""What the default diagnostics cost against the run itself, as `sdekit sample` runs them.

Each configuration runs in a fresh process (`python -m sdekit sample ...`, default
diagnostics and budget), as a user runs it: compilation included, nothing cached between
runs. Prints, per run, its own time (train + compile + sample seconds), the diagnostics'
time, their ratio and the diagnostics skipped by the budget. Then, again one fresh process
per configuration, each default diagnostic's declared cost (`AbstractDiagnostic.cost`,
what the budget compares) beside the seconds it took, with no budget. Writes both to
`results/diagnostic_budget.json` (or `--out DIR`).

    python benchmarks/diagnostic_budget.py
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

RUNS = [
    [],  # the default job: gmm40 by SMC
    ["gmm40", "--sampler", "reverse-sde"],
    ["funnel", "--sampler", "smc"],
    ["many-well-54", "--sampler", "follmer", "-n", "2000"],
    ["gaussian", "--sampler", "pis", "--train-iters", "100", "-n", "512"],
    ["gaussian", "--sampler", "cmcd", "--train-iters", "100", "-n", "512"],
    ["funnel", "--sampler", "dds", "--train-iters", "300"],
    ["gaussian", "-n", "100"],
    ["gmm40", "--sampler", "reverse-sde", "-n", "200"],
]

#: The default diagnostics of `sdekit sample`, in the order it runs them.
DIAGNOSTICS = ("weights", "sample-quality", "eubo", "sinkhorn")


def sdekit_sample(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdekit", "sample", *args],
                          check=True, capture_output=True, text=True)


def measure(args: list[str], out: Path) -> dict:
    sdekit_sample(*args, "--out", str(out))
    m = json.loads((out / "metrics.json").read_text())
    own = m["train_seconds"] + m["compile_seconds"] + m["sample_seconds"]
    return {"run": " ".join(args) or "(default job)", "own_seconds": own,
            "diagnostic_seconds": m["diagnostic_seconds"],
            "ratio": m["diagnostic_seconds"] / own,
            "skipped": m.get("diagnostics_skipped", [])}


def costs(args: list[str]) -> list[dict]:
    """In this process: the run of `args` with no diagnostics, then each default one's
    declared cost and the seconds it took."""
    import jax

    import sdekit

    config = tomllib.loads(sdekit_sample(*args, "--dry-run").stdout)
    run = sdekit.run(config, diagnostics=[])
    timings = {k: run.metrics[k] for k in ("train_seconds", "compile_seconds", "sample_seconds")}
    parts = {"target": run.target, "sampler": run.sampler, "samples": run.samples}
    rows = []
    for name in DIAGNOSTICS:
        diagnostic = sdekit.create("diagnostic", name)
        t0 = time.perf_counter()
        cost = diagnostic.cost(timings, **parts)
        t1 = time.perf_counter()
        values = jax.block_until_ready(dict(diagnostic(jax.random.key(1), **parts)))
        rows.append({"run": " ".join(args) or "(default job)", "diagnostic": name,
                     "cost": cost, "cost_seconds": t1 - t0,
                     "seconds": time.perf_counter() - t1, "applies": bool(values)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--costs-of", type=int, help=argparse.SUPPRESS)  # the worker
    options = parser.parse_args()
    if options.costs_of is not None:
        print(json.dumps(costs(RUNS[options.costs_of])))
        return
    print(f"{'run':52s} {'own s':>7s} {'diag s':>7s} {'ratio':>6s}  skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, args in enumerate(RUNS):
            r = measure(args, Path(tmp) / str(i))
            rows.append(r)
            print(f"{r['run']:52s} {r['own_seconds']:7.2f} {r['diagnostic_seconds']:7.2f} "
                  f"{r['ratio']:6.2f}  {', '.join(r['skipped']) or '-'}", flush=True)
    print(f"\n{'run':52s} {'diagnostic':15s} {'cost s':>7s} {'took s':>7s}")
    declared = []
    for i in range(len(RUNS)):
        worker = subprocess.run([sys.executable, __file__, "--costs-of", str(i)], check=True,
                                capture_output=True, text=True)
        for r in json.loads(worker.stdout.splitlines()[-1]):
            if r["applies"]:
                declared.append(r)
                print(f"{r['run']:52s} {r['diagnostic']:15s} {r['cost']:7.2f} "
                      f"{r['seconds']:7.2f}", flush=True)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "diagnostic_budget.json").write_text(
        json.dumps({"runs": rows, "costs": declared}, indent=1) + "\n")


if __name__ == "__main__":
    main()
