"""Fixtures shared by the test modules."""

import os

import pytest

import sdekit

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
