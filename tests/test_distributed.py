"""Multi-process runs on `jax.distributed`: two CPU processes on localhost (gloo collectives)
give the single process's samples and metrics, and a run killed in one process stops the
other, keeps its checkpoint and resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import sdekit

# a short pis training (chunks of 50 steps) and sampling, a few seconds once compiled
RUN = ["gaussian", "--sampler", "pis", "--steps", "8", "--batch", "64", "-n", "512", "--set",
       "target.dim=3", "--train-iters"]
LIMIT = 240  # seconds for any one process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


#: `sdekit sample ARGS` with no diagnostics (they would run the same on every process)
_SAMPLE = ("import sys; from sdekit import _run; from sdekit.cli import main; "
           "_run.DEFAULT_DIAGNOSTICS = (); main(['sample', *sys.argv[1:]])")


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return subprocess.Popen([sys.executable, "-c", _SAMPLE, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _launch(args: list[str], processes: int, heartbeat: int = 100) -> list[subprocess.Popen]:
    address = f"localhost:{_free_port()}"
    return [_start([*args, "--coordinator", address, "--processes", str(processes),
                    "--process-id", str(i), "--heartbeat-timeout", str(heartbeat)])
            for i in range(processes)]


def _finish(procs: list[subprocess.Popen], timeout: float = LIMIT) -> list[tuple[int, str, str]]:
    """Wait for every process; kill them all on a timeout (nothing left running)."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _outputs(directory: Path) -> tuple[dict, dict]:
    return sdekit.io.load_npz(directory / "samples.npz"), json.loads(
        (directory / "metrics.json").read_text())


def test_two_processes_give_the_single_process_run(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    procs = [_start([*RUN, "150", "--out", str(one)]),
             *_launch([*RUN, "150", "--out", str(two)], 2)]
    done = _finish(procs)
    for code, out, err in done:
        assert code == 0, err
    assert "wrote" in done[1][1] and "wrote" not in done[2][1]  # process 0 prints, not 1
    (x1, m1), (x2, m2) = _outputs(one), _outputs(two)
    # the gradient is reduced in another order across processes: float32 rounding only
    np.testing.assert_allclose(x2["x"], x1["x"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x2["log_weights"], x1["log_weights"], rtol=1e-4, atol=1e-4)
    assert m1["status"] == m2["status"] == "ok" and m1["n"] == m2["n"] == 512
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))


def test_a_process_killed_stops_the_other_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    args = [*RUN, "1000", "--out", str(out)]
    procs = _launch(args, 2, heartbeat=5)
    checkpoint = out / "checkpoint.eqx"
    deadline = time.monotonic() + LIMIT
    while not checkpoint.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.1)
    assert checkpoint.exists(), _finish(procs, 1)
    procs[1].send_signal(signal.SIGKILL)
    (code, _, err), _ = _finish(procs, timeout=60)
    assert code != 0 and "another task died" in err, err  # JAX's coordination service
    assert not (out / "metrics.json").exists()
    sampler = sdekit.compose({"name": "gaussian", "dim": 3},
                             {"name": "pis", "steps": 8, "train_iters": 1000, "batch": 64})
    _, step = sdekit.load_checkpoint(sampler, checkpoint)
    assert 50 <= step < 1000 and step % 50 == 0  # a whole chunk, written by process 0
    [(code, _, err)] = _finish([_start(["--resume", str(out)])])  # in one process
    assert code == 0, err
    samples, metrics = _outputs(out)
    assert metrics["status"] == "ok" and np.all(np.isfinite(samples["log_weights"]))


def test_loading_every_plugin_leaves_jax_uninitialised():
    # jax.distributed.initialize must come before any JAX computation, and the CLI loads
    # every plugin (for their commands) before it parses --distributed
    code = ("import sdekit, jax._src.xla_bridge as xb; sdekit.registry(); "
            "import sdekit.cli; assert not xb._backends, 'a plugin started JAX when loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=LIMIT)
    assert done.returncode == 0, done.stderr


def test_joining_needs_all_three_settings_or_none(monkeypatch):
    with pytest.raises(sdekit.DistributedError, match="together.*processes=2, process_id=None"):
        sdekit.initialize_distributed("localhost:1234", 2)
    with pytest.raises(sdekit.DistributedError, match="from 0 to processes - 1, got 2 of 2"):
        sdekit.initialize_distributed("localhost:1234", 2, 2)
    monkeypatch.setenv("SDEKIT_PROCESSES", "two")
    with pytest.raises(sdekit.DistributedError, match="must be integers, got 'two'"):
        sdekit.initialize_distributed()


def test_particle_sharding_in_one_process():
    assert sdekit.particle_sharding(64) is None  # no multi-process run: no sharding
    one = sdekit.particle_sharding(64, 1)
    assert one.spec == jax.sharding.PartitionSpec("particles") and len(one.device_set) == 1
    with pytest.raises(ValueError, match=r"devices must be an integer from 1 to 1 .*got 2"):
        sdekit.particle_sharding(64, 2)
