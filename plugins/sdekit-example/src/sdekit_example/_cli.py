"""The `sdekit ou-table` command, added through the `register_commands` hook."""

import json

import click
import jax.numpy as jnp

import sdekit


@click.command("ou-table")
@click.option("--theta", type=float, default=1.0, show_default=True, help="Mean reversion.")
@click.option("--sigma", type=float, default=2**0.5, show_default=True, help="Noise scale.")
@click.option("--horizon", "T", type=float, default=4.0, show_default=True, help="T.")
@click.option("--points", type=click.IntRange(min=2), default=5, show_default=True,
              help="Times from 0 to T.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ou_table(theta: float, sigma: float, T: float, points: int, as_json: bool) -> None:
    """The `ou` process's transition from time 0 and its reference std on a time grid."""
    process = sdekit.create("process", "ou", theta=theta, sigma=sigma, T=T, t_max=T)
    rows = []
    for t in jnp.linspace(0.0, T, points):
        a, std = process.transition(0.0, t)
        rows.append({"t": float(t), "a": float(a), "std": float(std),
                     "reference_std": float(process.reference_std(t))})
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'t':>8} {'a(0,t)':>10} {'std(0,t)':>10} {'reference':>10}")
    for r in rows:
        click.echo(f"{r['t']:8.3f} {r['a']:10.4f} {r['std']:10.4f} {r['reference_std']:10.4f}")
