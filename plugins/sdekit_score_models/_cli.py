"""`sdekit train-score`: denoising score matching from data, added by the plugin's
`register_commands` hook."""

from pathlib import Path

import click

import sdekit

from ._data import DATASETS
from ._run import SECTIONS, build, resolve, train_run

__all__ = ["train_score"]


@click.command(name="train-score")
@click.argument("data", required=False)
@click.option("--process", metavar="NAME", help="Forward process [default: vp].")
@click.option("--model", "kind", type=click.Choice(["potential", "score"]),
              help="Network kind: potential (score = gradient of a scalar net) or score "
                   "[default: potential].")
@click.option("--steps", type=int, metavar="N", help="Set training.steps.")
@click.option("--fp-weight", type=float, metavar="W",
              help="Set training.fp_weight, the Fokker-Planck regulariser's weight.")
@click.option("--seed", type=int, metavar="S", help="PRNG seed [default: 0].")
@click.option("--set", "sets", multiple=True, metavar="SECTION.OPTION=VALUE",
              help=f"Set an option; SECTION is one of {', '.join(SECTIONS)}; VALUE is read as "
                   "TOML, else as a string. Repeatable.")
@click.option("--out", "-o", type=click.Path(), metavar="DIR",
              help="Output directory [default: runs/score-DATA-PROCESS].")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              metavar="DIR", help="Continue the interrupted run in DIR (its config.toml and "
                                  "checkpoint.eqx).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_score(data, process, kind, steps, fp_weight, seed, sets, out, resume_dir, quiet) -> None:
    """Learn the score of DATA by denoising score matching; sample it by reverse SDE and PF-ODE.

    DATA is a .npy file of shape (N, d), an .npz file with such an array `x` (or only
    one array), or a built-in 2-d data set: blob, checker, circles, moons, swiss-roll.

    \b
    Writes into DIR, each file atomically:
      config.toml     the complete configuration (written first)
      checkpoint.eqx  the training state, every training.chunk steps (for --resume)
      model.eqx       the trained network (`--score learned --set score.run=DIR`)
      samples.npz     sde, ode: (n, d) samples from the same prior draws
      metrics.json    DSM loss (training and held-out), FP residual, and MMD, Sinkhorn,
                      sliced and exact W2 of each sampler's samples against held-out data
      samples.png     held-out data and both samplers' samples

    \b
    Options (`sdekit train-score ... --set SECTION.OPTION=VALUE`):
      data      n (points drawn from a built-in set), holdout (held-out fraction)
      process   the process's options (`sdekit show process NAME`)
      model     kind, width, depth, activation, time_features, max_frequency, scale,
                input_scale
      training  steps, batch, learning_rate, time_distribution, weighting, fp_weight,
                fp_points, fp_box, fp_batch, divergence, grad_clip, warmup, chunk, ...
      sampling  n, steps, spacing (reverse SDE), ode_solver, ode_steps, rtol, atol
    """
    if resume_dir is not None:
        given = [f for f, v in (("DATA", data), ("--process", process), ("--model", kind),
                                ("--steps", steps), ("--fp-weight", fp_weight), ("--seed", seed),
                                ("--set", sets)) if v]
        if given or (out is not None and Path(out) != Path(resume_dir)):
            raise click.UsageError(f"--resume DIR takes its configuration and output from DIR; "
                                   f"drop {', '.join(given) or '--out'}")
        path = Path(resume_dir) / "config.toml"
        cfg, out = resolve(sdekit.load_config(path), source=str(path)), resume_dir
    else:
        if data is None:
            raise click.UsageError(f"give DATA: a .npy/.npz file or one of {', '.join(DATASETS)}")
        flags = (("model.kind", kind and repr(kind)), ("training.steps", steps),
                 ("training.fp_weight", fp_weight))
        extra = [f"{key}={value}" for key, value in flags if value is not None]
        cfg = resolve(data=data, process=process, seed=seed, sets=(*extra, *sets))
        out = out or f"runs/score-{Path(str(data)).stem}-{cfg['process']['name']}"
    sdekit.io.check_writable_dir(out)
    parts = build(cfg)
    click.echo(f"training a {cfg['model']['kind']} net on {cfg['data']['source']} under "
               f"{cfg['process']['name']} ({cfg['training']['steps']} steps, seed {cfg['seed']})"
               + (" (resuming)" if resume_dir else "") + "...", err=True)
    run = train_run(cfg, out, resume=resume_dir is not None, progress=not quiet, parts=parts)
    rows = _rows(run.metrics)
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")
    click.echo(f"wrote {out}/")


def _rows(m: dict) -> list[tuple[str, str]]:
    """The losses and each sampler's distances to held-out data, as `(name, value)` rows."""
    rows = [("dsm loss", f"{m['dsm_loss']:.5g} (held out {m['dsm_loss_held_out']:.5g})"),
            ("fp residual (held out)", f"{m['fp_residual_held_out']:.5g}")]
    for name in ("sde", "ode"):
        q = m[name]
        rows.append((f"{name} vs held out", ", ".join(
            f"{k} {q[k]:.4g}" for k in ("w2", "sliced_w2", "mmd", "sinkhorn") if q.get(k) is not None
        )))
    if m["ode_sde_w2"] is not None:
        rows.append(("W2(ode, sde)", f"{m['ode_sde_w2']:.4g}"))
    return rows
