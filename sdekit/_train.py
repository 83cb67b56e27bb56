"""Training of anything with a stochastic loss: learned samplers and score models."""

import abc
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from . import io as sdekit_io
from ._distributed import is_writer, replicate
from ._errors import SdekitError
from ._target import AbstractTarget


class TrainingDiverged(SdekitError):
    """The loss or its gradient turned non-finite; the last good state was kept."""


class TrainOptions(eqx.Module):
    """How `sdekit.train` optimises a model: Adam with a cosine-decayed learning rate.

    **Fields:**

    - `steps`: number of optimiser steps.
    - `learning_rate`: peak learning rate (after `warmup` steps of linear warm-up, decayed
      by a cosine to `learning_rate * final_lr_fraction`).
    - `grad_clip`: clip the global gradient norm to this value (`None`: no clipping).
    - `chunk`: steps compiled into one `lax.scan` between progress updates; checkpoints
      are written at chunk boundaries. (The last chunk runs whole, its extra steps no-ops,
      so one compilation serves the whole run.)
    """

    steps: int = eqx.field(static=True, default=2000)
    learning_rate: float = eqx.field(static=True, default=1e-3)
    warmup: int = eqx.field(static=True, default=0)
    final_lr_fraction: float = eqx.field(static=True, default=0.1)
    grad_clip: float | None = eqx.field(static=True, default=1.0)
    chunk: int = eqx.field(static=True, default=50)

    def __check_init__(self):
        for name in ("steps", "chunk"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")

    def optimizer(self) -> optax.GradientTransformation:
        """The optax optimiser these options describe: global-norm clipping (if `grad_clip`),
        then Adam on the warm-up-cosine learning-rate schedule."""
        schedule = optax.warmup_cosine_decay_schedule(
            0.0 if self.warmup else self.learning_rate,
            self.learning_rate,
            self.warmup,
            max(self.steps, self.warmup + 1),
            self.learning_rate * self.final_lr_fraction,
        )
        clip = [] if self.grad_clip is None else [optax.clip_by_global_norm(self.grad_clip)]
        return optax.chain(*clip, optax.adam(schedule))


class AbstractTrainable(eqx.Module):
    """A model trained by `sdekit.train`: a stochastic `loss(key)` and its `train_options`.

    `trainable()` says which leaves are trained: by default the model's floating-point
    arrays, except those inside an `AbstractTarget` (a target is data, never trained).

    A loss that carries state from step to step (a replay buffer of past samples)
    overrides `init_loss_state()` and `loss_with_state(key, state)`; `sdekit.train` keeps
    the state in its checkpoint, so a resumed run continues with the same state.
    """

    train_options: eqx.AbstractVar[TrainOptions]

    def trainable(self) -> PyTree[bool]:
        """The filter spec of the trained leaves."""
        return float_arrays_outside_targets(self)

    @abc.abstractmethod
    def loss(self, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        """A loss to minimise and named scalar statistics to record (e.g. the ELBO)."""

    def init_loss_state(self) -> PyTree:
        """The loss's state before the first step (`None`: a stateless loss)."""
        return None

    def loss_with_state(self, key: PRNGKeyArray, state: PyTree) -> tuple[Scalar, dict[str, Scalar], PyTree]:
        """The loss, its statistics and the state for the next step (gradients flow only
        into the loss). By default `loss(key)`, the state passed through."""
        value, stats = self.loss(key)
        return value, stats, state


def float_arrays_outside_targets(model: PyTree) -> PyTree[bool]:
    """A filter spec: `True` at `model`'s float arrays, except inside an `AbstractTarget`."""
    is_target = lambda node: isinstance(node, AbstractTarget)  # noqa: E731
    return jax.tree.map(
        lambda node: False if is_target(node) else eqx.is_inexact_array(node),
        model,
        is_leaf=is_target,
    )


class TrainState(eqx.Module):
    """Everything that determines the rest of a run: the checkpoint."""

    params: PyTree
    opt_state: PyTree
    loss_state: PyTree
    step: Array
    history: dict[str, Float[Array, " steps"]]
    diverged_at: Array


def _init_state(model: AbstractTrainable, names: tuple[str, ...]) -> TrainState:
    params, _ = eqx.partition(model, model.trainable())
    steps = model.train_options.steps
    return TrainState(
        params=params,
        opt_state=model.train_options.optimizer().init(params),
        loss_state=model.init_loss_state(),
        step=jnp.array(0),
        history={name: jnp.full(steps, jnp.nan) for name in ("loss", *names)},
        diverged_at=jnp.array(-1),
    )


@eqx.filter_jit
def _run_chunk(state: TrainState, static: PyTree, key: PRNGKeyArray, n: int) -> TrainState:
    optimizer = static.train_options.optimizer()

    def loss(params, k, loss_state):
        value, stats, loss_state = eqx.combine(params, static).loss_with_state(k, loss_state)
        return value, (stats, jax.lax.stop_gradient(loss_state))

    steps = static.train_options.steps

    def step(state: TrainState, _):
        k = jax.random.fold_in(key, state.step)
        (value, (stats, loss_state)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(
            state.params, k, state.loss_state)
        finite = jnp.isfinite(value) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        finite &= state.diverged_at < 0
        finite &= state.step < steps  # a no-op past the end: every chunk has one length
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = eqx.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(finite, a, b), new, old
        )
        values = {"loss": value, **stats}
        history = {
            name: h.at[state.step].set(jnp.where(finite, values[name], jnp.nan), mode="drop")
            for name, h in state.history.items()
        }
        return TrainState(
            params=keep(new_params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            loss_state=keep(loss_state, state.loss_state),
            step=jnp.where(finite, state.step + 1, state.step),
            history=history,
            diverged_at=jnp.where(
                finite | (state.diverged_at >= 0) | (state.step >= steps), state.diverged_at, state.step
            ),
        ), None

    state, _ = jax.lax.scan(step, state, length=n)
    return state


def _load_state(path: Path, like: TrainState) -> TrainState:
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except (RuntimeError, ValueError, EOFError) as e:
        raise SdekitError(
            f"{path} is not a checkpoint of this model ({_first_line(e)}); it was written with "
            f"other options (train_iters, batch, network sizes, ...) or is damaged. Restore "
            f"those options, or remove the file to start afresh"
        ) from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


def _save(path: Path, state: TrainState) -> None:
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, state)
    sdekit_io.atomic_write(path, buffer.getvalue())


def train(
    model: AbstractTrainable,
    key: PRNGKeyArray,
    *,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int], None] | None = None,
) -> tuple[AbstractTrainable, dict[str, np.ndarray]]:
    """Minimise `model.loss` with `model.train_options`; return the trained model and history.

    Step `i` uses the key `jax.random.fold_in(key, i)`, so a run is a pure function of
    `(model, key)`. With `checkpoint` (a file path) the state is written there atomically
    every `chunk` steps, and a run that finds the file resumes from it: an interrupted run,
    resumed, ends with the same parameters as an uninterrupted one. If the loss or a
    gradient turns non-finite, training stops with `TrainingDiverged` naming the step; the
    checkpoint keeps the last good state. In a multi-process run (`jax.distributed`) every
    process trains the same parameters and process 0 writes the checkpoint. `callback`, if
    given, is called on the host after each chunk with the number of steps done.

    The history holds per-step arrays `loss` and the statistics the model's loss reports.
    """
    options = model.train_options
    _, static = eqx.partition(model, model.trainable())
    state = _init_state(model, _stat_names(model))
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and path.exists():
        state = _load_state(path, state)
    state = replicate(state)
    bar = _progress_bar(options.steps, int(state.step), progress)
    start = time.perf_counter()
    try:
        while (done := int(state.step)) < options.steps:
            state = _run_chunk(state, static, key, min(options.chunk, options.steps))
            if path is not None and is_writer():
                _save(path, state)
            if int(state.diverged_at) >= 0:
                raise TrainingDiverged(
                    f"the loss or its gradient became non-finite at step {int(state.diverged_at)}; "
                    + (f"the last good state is in {path}" if path else "stopped")
                    + " (try a smaller learning_rate, a grad_clip, or a float64 run)"
                )
            if callback is not None:
                callback(int(state.step))
            bar.update(int(state.step) - done)
            last = {k: float(v[int(state.step) - 1]) for k, v in state.history.items()}
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
    finally:
        bar.close()
    history = {k: np.asarray(v) for k, v in state.history.items()}
    history["train_seconds"] = np.asarray(time.perf_counter() - start)
    return eqx.combine(state.params, static), history


def load_checkpoint(model: AbstractTrainable, checkpoint: str | os.PathLike) -> tuple[AbstractTrainable, int]:
    """`model` with the parameters stored in `checkpoint` (written by `train`), and the
    number of steps they were trained for."""
    state = _load_state(Path(checkpoint), _init_state(model, _stat_names(model)))
    _, static = eqx.partition(model, model.trainable())
    return eqx.combine(state.params, static), int(state.step)


def _stat_names(model: AbstractTrainable) -> tuple[str, ...]:
    return tuple(jax.eval_shape(model.loss_with_state, jax.random.key(0), model.init_loss_state())[1])


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="training", leave=False)
