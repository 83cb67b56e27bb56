"""sdekit: diffusion-based samplers, score models and Fokker–Planck diagnostics on JAX.

The core defines the interfaces and the plugin machinery; every process, target, score,
sampler and diagnostic comes from a plugin, first-party ones included.
"""

import importlib.metadata

from . import _xla  # noqa: F401  first: XLA_FLAGS must be set before JAX starts its backend
from ._compose import Spec, check_dims, compose, create, resolve_part
from ._diagnostic import AbstractDiagnostic
from ._distributed import DistributedError, initialize_distributed, particle_sharding
from ._errors import CompositionError, PluginError, SdekitError, TargetError, UnknownNameError
from ._fit import FitError, GaussianFit, fit_gaussian
from ._log_density import LogDensity, target_from_log_prob, to_arviz
from ._mixture import GaussianMixture
from ._plugins import KINDS, plugin_manager, register_plugin, registry, unregister_plugin
from ._process import AbstractProcess, gaussian_log_prob, time_grid
from ._path import (
    Kernel,
    Path,
    StepStats,
    backward_log_weights,
    gaussian_log_ratio,
    path_log_ratio,
    remat_scan,
    simulate,
    simulate_backward,
)
from ._sampler import (
    AbstractDiffusionSampler,
    AbstractPathSampler,
    AbstractSampler,
    Samples,
    log_Z_estimate,
)
from ._score import AbstractController, AbstractDensityScore, AbstractPotentialScore, AbstractScore
from ._target import AbstractTarget, check_target
from ._target_spec import load_object, resolve_target
from ._train import (
    AbstractTrainable,
    TrainingDiverged,
    TrainOptions,
    float_arrays_outside_targets,
    load_checkpoint,
    train,
)
from . import io, metrics
from ._config import ConfigError, check_section, derive_seed, load_config, parse_set, resolve_config
from ._run import Run, RunError, RunFailed, RunWarning, diagnose, load_run, run
from ._suggest import did_you_mean
from .hookspecs import hookimpl

__version__ = importlib.metadata.version("sdekit")

__all__ = [
    "ConfigError",
    "Run",
    "RunError",
    "RunFailed",
    "RunWarning",
    "check_section",
    "derive_seed",
    "diagnose",
    "did_you_mean",
    "io",
    "load_config",
    "load_run",
    "parse_set",
    "resolve_config",
    "run",
    "AbstractController",
    "AbstractDensityScore",
    "AbstractDiffusionSampler",
    "AbstractPathSampler",
    "AbstractPotentialScore",
    "Kernel",
    "Path",
    "StepStats",
    "backward_log_weights",
    "gaussian_log_ratio",
    "path_log_ratio",
    "remat_scan",
    "resolve_part",
    "Spec",
    "simulate",
    "simulate_backward",
    "AbstractDiagnostic",
    "AbstractProcess",
    "AbstractSampler",
    "AbstractScore",
    "AbstractTarget",
    "AbstractTrainable",
    "TrainOptions",
    "TrainingDiverged",
    "train",
    "load_checkpoint",
    "CompositionError",
    "DistributedError",
    "initialize_distributed",
    "particle_sharding",
    "FitError",
    "GaussianFit",
    "fit_gaussian",
    "GaussianMixture",
    "KINDS",
    "PluginError",
    "Samples",
    "SdekitError",
    "TargetError",
    "UnknownNameError",
    "check_dims",
    "check_target",
    "compose",
    "float_arrays_outside_targets",
    "create",
    "gaussian_log_prob",
    "time_grid",
    "hookimpl",
    "log_Z_estimate",
    "plugin_manager",
    "register_plugin",
    "registry",
    "unregister_plugin",
    "metrics",
    "LogDensity",
    "load_object",
    "resolve_target",
    "target_from_log_prob",
    "to_arviz",
]
