"""What the default diagnostics cost against the run itself, as `sdekit sample` runs them.

Each configuration runs in a fresh process (`python -m sdekit sample ...`, default
diagnostics and budget), as a user runs it: compilation included, nothing cached between
runs. Prints, per run, its own time (train + compile + sample seconds), the diagnostics'
time, their ratio and the diagnostics skipped by the budget; writes them to
`results/diagnostic_budget.json` (or `--out DIR`).

    python benchmarks/diagnostic_budget.py
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = [
    [],  # the default job: gmm40 by SMC
    ["gmm40", "--sampler", "reverse-sde"],
    ["funnel", "--sampler", "smc"],
    ["many-well-54", "--sampler", "follmer", "-n", "2000"],
    ["gaussian", "--sampler", "pis", "--train-iters", "100", "-n", "512"],
    ["gaussian", "--sampler", "cmcd", "--train-iters", "100", "-n", "512"],
    ["funnel", "--sampler", "dds", "--train-iters", "300"],
]


def measure(args: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "sdekit", "sample", *args, "--out", str(out)],
                   check=True, capture_output=True)
    m = json.loads((out / "metrics.json").read_text())
    own = m["train_seconds"] + m["compile_seconds"] + m["sample_seconds"]
    return {"run": " ".join(args) or "(default job)", "own_seconds": own,
            "diagnostic_seconds": m["diagnostic_seconds"],
            "ratio": m["diagnostic_seconds"] / own,
            "skipped": m.get("diagnostics_skipped", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    out = parser.parse_args().out
    print(f"{'run':52s} {'own s':>7s} {'diag s':>7s} {'ratio':>6s}  skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, args in enumerate(RUNS):
            r = measure(args, Path(tmp) / str(i))
            rows.append(r)
            print(f"{r['run']:52s} {r['own_seconds']:7.2f} {r['diagnostic_seconds']:7.2f} "
                  f"{r['ratio']:6.2f}  {', '.join(r['skipped']) or '-'}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostic_budget.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
