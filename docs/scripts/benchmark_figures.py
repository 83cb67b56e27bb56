"""The benchmark page's figures, drawn from the stored results in `benchmarks/results/`.

`figures()` returns `{site path: PNG bytes}`; the build hook adds them to the site, so no
figure is committed by hand. Run it alone to write them into a folder:
`python docs/scripts/benchmark_figures.py OUT_DIR`. The reproductions' own figures (drawn
by their scripts, stored beside their JSON) are copied as they are.
"""

import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SITE_DIR = "figures"
#: Figures the reproduction scripts draw from their own runs, shown as they are.
REPRODUCTIONS = (
    "noise_regularisation", "oscillating_score_error", "limited_width_control",
    "fp_operator_checks", "exact_mixture_scores", "girsanov_bound", "ode_sde_gap_full",
    "score_fp_residual", "smoothing_vs_pinning",
)
TARGETS = ("funnel", "gmm40", "many-well-54", "many-well-32")


def _label(row: dict) -> str:
    """A sampler and the training variant of its row (loss, exploration, control scale)."""
    parts = [row["sampler"]]
    if row.get("variant"):
        parts.append(str(row["variant"]))
    if row.get("control_scale") is not None:
        parts.append(f"c={row['control_scale']:g}")
    return " ".join(parts)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _per_seed(rows: list[dict], key: str, xlabel: str, title: str, symmetric: bool) -> bytes:
    """`row[key]` of every stored run, by target and sampler (one point per seed)."""
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(4.4 * len(TARGETS), 4.2))
    for ax, target in zip(axes, TARGETS):
        runs = defaultdict(list)
        for r in rows:
            if r["target"] == target and r.get(key) is not None:
                runs[_label(r)].append(r[key])
        labels = sorted(runs)
        for i, label in enumerate(labels):
            ax.plot(runs[label], [i] * len(runs[label]), "o", alpha=0.7, color=f"C{i}")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(target)
        ax.set_xlabel(xlabel)
        if symmetric:
            ax.axvline(0.0, color="k", lw=0.8)
            ax.set_xscale("symlog", linthresh=0.1)
            top = 1.5 * max(0.1, *(abs(v) for vs in runs.values() for v in vs))
            ax.set_xlim(-top, top)
            ticks = [t for t in (-100, -10, -1, -0.1, 0, 0.1, 1, 10, 100) if abs(t) <= top]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        else:
            ax.set_xscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def sampler_errors(rows: list[dict]) -> bytes:
    """log Ẑ error of every stored run, by target and sampler (one point per seed)."""
    return _per_seed(rows, "log_Z_error", "log Ẑ − log Z (symmetric log scale)",
                     "diffusion_samplers.json: log Ẑ error per seed", symmetric=True)


def sampler_ess(rows: list[dict]) -> bytes:
    """Normalised effective sample size of every stored run (one point per seed)."""
    return _per_seed(rows, "ess", "ESS / n", "diffusion_samplers.json: ESS per seed",
                     symmetric=False)


def speed(result: dict) -> bytes:
    """Training-step time and sampling throughput of sdekit against the hand-written floor."""
    rows = result["speed"]
    names = [f"{r['sampler']}\n{r['target']}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(rows))
    for ax, key, unit in ((a, "step_s", "training step (s)"),
                          (b, "sample_throughput", "particles x steps / s")):
        ax.bar([i - 0.2 for i in x], [r[f"sdekit_{key}"] for r in rows], 0.4, label="sdekit")
        ax.bar([i + 0.2 for i in x], [r[f"floor_{key}"] for r in rows], 0.4, label="floor")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_ylabel(unit)
    a.legend()
    fig.suptitle(f"benchmarks/results/speed.json ({result['command']})", fontsize=9)
    return _png(fig)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def summary_table(rows: list[dict] | None = None) -> str:
    """A markdown table of the stored sampler runs: per target and sampler variant, the
    seeds, the median [range] log Ẑ error and ESS, and the target evaluations."""
    if rows is None:
        rows = json.loads((RESULTS / "diffusion_samplers.json").read_text())
    groups = defaultdict(list)
    for r in rows:
        groups[(TARGETS.index(r["target"]), _label(r))].append(r)
    lines = ["| target | sampler | seeds | log Ẑ error | ESS | target evaluations |",
             "|---|---|---|---|---|---|"]
    for (t, label), runs in sorted(groups.items()):
        cells = []
        for key, fmt in (("log_Z_error", "{:+.3f}"), ("ess", "{:.3f}")):
            vals = [r[key] for r in runs if r.get(key) is not None]
            cells.append("–" if not vals else
                         f"{fmt.format(_median(vals))} [{fmt.format(min(vals))}, "
                         f"{fmt.format(max(vals))}]")
        evals = [r["target_evaluations"] for r in runs if r.get("target_evaluations")]
        cost = f"{_median(evals):.3g}" if evals else "–"
        seeds = " ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| {TARGETS[t]} | `{label}` | {seeds} | {cells[0]} | {cells[1]} | {cost} |")
    return "\n".join(lines)


def figures() -> dict[str, bytes]:
    """Every figure of the benchmark page, by its path on the site."""
    rows = json.loads((RESULTS / "diffusion_samplers.json").read_text())
    out = {
        f"{SITE_DIR}/sampler_errors.png": sampler_errors(rows),
        f"{SITE_DIR}/sampler_ess.png": sampler_ess(rows),
        f"{SITE_DIR}/speed.png": speed(json.loads((RESULTS / "speed.json").read_text())),
    }
    for name in REPRODUCTIONS:
        out[f"{SITE_DIR}/{name}.png"] = (RESULTS / f"{name}.png").read_bytes()
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "site-figures")
    (target / SITE_DIR).mkdir(parents=True, exist_ok=True)
    for path, content in figures().items():
        (target / path).write_bytes(content)
        print(target / path)
