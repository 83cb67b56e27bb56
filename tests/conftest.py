"""Fixtures shared by the test modules."""

import atexit
import os
import shutil
import tempfile

# One XLA compilation cache for the session, shared by its workers and the subprocesses
# tests start (set before JAX is imported): many tests compile the same programs again,
# the command-line ones in fresh processes. Cached programs are the same programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdekit-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Most tests run small programs once, so compiling them costs more than running them.
# XLA's machine-code generation at -O0 (the same HLO programs, its optimisation passes
# included) saves about a fifth of the suite's time on 2 cores. Users' runs keep -O2.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import pytest  # noqa: E402

import sdekit  # noqa: E402

# Which diagnostics fit in a run's time budget depends on the machine's speed: no test's
# outcome may. Tests of the budget itself pass `diagnostic_budget` explicitly.
os.environ["SDEKIT_DIAGNOSTIC_BUDGET"] = "inf"


@pytest.fixture
def interrupted_training(monkeypatch):
    """`interrupted_training(model, key, checkpoint, chunks)`: `sdekit.train` stopped by a
    `KeyboardInterrupt` after `chunks` chunks, as a killed run would be, leaving its
    checkpoint behind."""

    def run(model, key, checkpoint, chunks: int = 2) -> None:
        run_chunk, calls = sdekit._train._run_chunk, []

        def interrupted(*args):
            if len(calls) == chunks:
                raise KeyboardInterrupt
            calls.append(1)
            return run_chunk(*args)

        with monkeypatch.context() as patch:
            patch.setattr(sdekit._train, "_run_chunk", interrupted)
            with pytest.raises(KeyboardInterrupt):
                sdekit.train(model, key, checkpoint=checkpoint, progress=False)

    return run
