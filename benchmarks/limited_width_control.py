"""Limited-width controllability in 2-d (REPRODUCTIONS.md R0.3), trained through the finite-volume solver.

    python benchmarks/limited_width_control.py [--steps 400]

Neural SDE `dX = W(t) tanh(A(t) X + b(t)) dt + √2 dB`, width 2 (= d): the repository's
`limited-width` controller (piecewise constant on K ∈ {1, 4, 16} equal pieces of [0, 1]).
Target: the Fokker–Planck trajectory of the non-Lipschitz, non-separable drift
`−sign(x₁ + x₂)(1, 1)/√2 + J x`, J the rotation generator [[0, −1], [1, 0]], from
N((1.5, 1.5), 0.25 I). Both densities by the finite-volume solver on a 64² grid over
[−4, 4]² (Scharfetter–Gummel, dimensional splitting, dt = 0.01); the loss is
Σ_k ‖ρ^θ_{t_k} − ρ_{t_k}‖² / Σ_k ‖ρ_{t_k}‖² over t_k = 0.1, 0.2, …, 1, minimised with
`sdekit.train` (Adam) by differentiating through the solver.

Pass (aim): the relative L2 tracking error decreases with K, < 0.1 at K = 16.
Prints the table; writes `benchmarks/results/limited_width_control.json` and `limited_width_control.png`.
"""

import argparse
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sdekit
from sdekit_fokker_planck import FokkerPlanck, Grid

RESULTS = Path(__file__).parent / "results"
PIECES = (1, 4, 16)
J = jnp.array([[0.0, -1.0], [1.0, 0.0]])
SNAPSHOTS = jnp.linspace(0.1, 1.0, 10)
SUBSTEPS = 10  # dt = 0.01


def reference_drift(t, x):
    return -jnp.sign(x[0] + x[1]) * jnp.ones(2) / jnp.sqrt(2.0) + J @ x


class Tracking(sdekit.AbstractTrainable):
    """The relative squared L2 tracking loss of a controller's FP trajectory (only the controller is trained)."""

    controller: sdekit.AbstractController
    grid: Grid
    rho0: jax.Array
    reference: jax.Array
    train_options: sdekit.TrainOptions

    def trainable(self):
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.controller, spec, replace=sdekit.float_arrays_outside_targets(self.controller))

    def densities(self):
        fp = FokkerPlanck(self.controller, jnp.sqrt(2.0), self.grid)
        ts = jnp.concatenate([jnp.zeros(1), SNAPSHOTS])
        return fp.solve(self.rho0, ts, SUBSTEPS)[1:]

    def loss(self, key):
        err = jnp.sum((self.densities() - self.reference) ** 2) / jnp.sum(self.reference**2)
        return err, {"relative_l2": jnp.sqrt(err)}


def run(train_steps: int = 400, learning_rate: float = 0.03, cells: int = 64) -> dict:
    grid = Grid([-4.0, -4.0], [4.0, 4.0], cells)
    rho0 = grid.density(lambda x: -jnp.sum((x - 1.5) ** 2) / (2 * 0.25))
    fp_ref = FokkerPlanck(reference_drift, jnp.sqrt(2.0), grid)
    reference = fp_ref.solve(rho0, jnp.concatenate([jnp.zeros(1), SNAPSHOTS]), SUBSTEPS)[1:]
    dummy = sdekit.create("target", "gaussian", dim=2)
    process = sdekit.create("process", "vp", T=1.0)
    rows = []
    for K in PIECES:
        controller = sdekit.create("controller", "limited-width", target=dummy, process=process, pieces=K, seed=0)
        options = sdekit.TrainOptions(steps=train_steps, learning_rate=learning_rate, grad_clip=None, chunk=50)
        model = Tracking(controller, grid, rho0, reference, options)
        initial = float(model.loss(None)[1]["relative_l2"])
        trained, history = sdekit.train(model, jax.random.key(0), progress=False)
        final = float(trained.loss(None)[1]["relative_l2"])
        rows.append({
            "pieces": K, "width": 2, "initial_relative_l2": initial, "relative_l2": final,
            "best_relative_l2_in_history": float(np.nanmin(history["relative_l2"])),
            "mass_error": float(jnp.max(jnp.abs(jax.vmap(grid.mass)(trained.densities()) - 1.0))),
            "train_seconds": float(history["train_seconds"]),
        })
        print(rows[-1], flush=True)
    errs = [r["relative_l2"] for r in rows]
    checks = {"decreasing_in_K": bool(np.all(np.diff(errs) < 0)), "K16_below_0.1": bool(errs[-1] < 0.1)}
    return {"setup": {"cells": cells, "box": [-4, 4], "dt": 1.0 / (SUBSTEPS * len(SNAPSHOTS)),
                      "snapshots": np.asarray(SNAPSHOTS).tolist(), "train_steps": train_steps,
                      "learning_rate": learning_rate, "controller": "limited-width (width 2)"},
            "rows": rows, "checks": checks, "claim_held": all(checks.values())}


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    K = [r["pieces"] for r in result["rows"]]
    ax.semilogx(K, [r["relative_l2"] for r in result["rows"]], "o-", base=2, label="trained")
    ax.semilogx(K, [r["initial_relative_l2"] for r in result["rows"]], "x:", base=2, label="initial (W = 0)")
    ax.axhline(0.1, color="k", ls="--", lw=0.8)
    ax.set_xlabel("pieces K")
    ax.set_ylabel("relative L2 tracking error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    with jax.enable_x64(True):
        result = run(args.steps, args.lr)
    print(f"{'K':>4}{'initial':>10}{'trained':>10}")
    for r in result["rows"]:
        print(f"{r['pieces']:4d}{r['initial_relative_l2']:10.4f}{r['relative_l2']:10.4f}")
    print("checks:", result["checks"], "claim held:", result["claim_held"])
    args.out.mkdir(exist_ok=True, parents=True)
    (args.out / "limited_width_control.json").write_text(json.dumps(result, indent=2))
    _plot(result, args.out / "limited_width_control.png")


if __name__ == "__main__":
    main()
