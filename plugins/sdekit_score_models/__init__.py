"""Score-based generative modelling from data: denoising score matching and score networks.

- data: `dataset(name, key, n)` for the built-in 2-d sets (`datasets()` lists them),
  `load_data(path)` for `.npy`/`.npz` arrays;
- networks: `ScoreNet` (direct) and `PotentialNet` (score = gradient of a scalar), both
  `sdekit.AbstractScore`s, built by `score_network`;
- training: `score_matching(data, net, ...)` is an `sdekit.AbstractTrainable` for
  `sdekit.train`: DSM for any process with Gaussian transitions, plus an optional
  Fokker–Planck residual (`sdekit.fokker_planck`) with a weight;
- sampling: `sample_sde`, `sample_ode` (the `reverse-sde` and `pf-ode` samplers);
- runs: `resolve` (the configuration, by the core's rules: `sdekit.parse_set`,
  `sdekit.check_section`, `sdekit.ConfigError`), `train_run` (what `sdekit train-score`
  does; returns a `sdekit.Run` and writes its files with `sdekit.io`) and the registered
  score `learned`, which loads a trained network from a run directory.

It uses only `sdekit`'s public API (metrics from `sdekit.metrics`).
"""

import sdekit

from ._cli import train_score
from ._data import DATASETS, dataset, datasets, load_data
from ._dsm import ScoreMatching, sample_ode, sample_sde, score_matching
from ._networks import PotentialNet, ScoreNet, TimeEmbedding, score_network
from ._run import learned, load_run, resolve, train_run

__all__ = [
    "DATASETS",
    "PotentialNet",
    "ScoreMatching",
    "ScoreNet",
    "TimeEmbedding",
    "dataset",
    "datasets",
    "learned",
    "load_data",
    "load_run",
    "resolve",
    "sample_ode",
    "sample_sde",
    "score_matching",
    "score_network",
    "train_run",
    "train_score",
]


@sdekit.hookimpl
def register_scores(register):
    register("learned", learned)


@sdekit.hookimpl
def register_commands(cli):
    cli.add_command(train_score)
