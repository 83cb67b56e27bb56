"""Fault injection: a full disk, a read-only output directory, a file-size limit, and a
process killed with SIGKILL while training or writing its outputs, then resumed.

Each fault must end in one `Error: ...` line (the file, the cause, what to do), a non-zero
exit status and no partial output; a killed run, resumed, must give exactly the files of an
uninterrupted one, and no directory in between may be taken for a result."""

import builtins
import errno
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sdekit
from sdekit import _run as run_module
from sdekit import io as sio
from sdekit.cli import cli

#: A run that does not train: one short compilation, reused by every run in this process.
QUICK = ["sample", "gaussian", "--sampler", "reverse-sde", "--steps", "2", "-n", "2000"]
#: A run that trains: 40 checkpoints of 50 steps, about a second once compiled.
TRAINED = ["sample", "gaussian", "--sampler", "pis", "--controller", "mlp", "--steps", "8",
           "--batch", "64", "-n", "64", "--seed", "3", "--set", "controller.width=4",
           "--train-iters", "2000"]


@pytest.fixture
def weights_only(monkeypatch):
    """Only the cheap weights diagnostic: the faults are in writing, not in diagnosing."""
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights",))


def _one_error(result) -> str:
    """The single `Error:` line of a failed command (no traceback, status 1)."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _listing(directory: Path) -> list[str]:
    """Every name in `directory`, hidden temporary files included."""
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------
# a full disk, a read-only file system, a file-size limit


def _inject(monkeypatch, root: Path, code: int, where: str, name: str) -> None:
    """Make the OS fail with `code` for file `name` (or the directory itself, for
    `where="mkdir"`) under `root`: on creating it (`"open"`), on flushing its data to disk
    (`"fsync"`, where a full disk shows on many file systems), or on `"mkdir"`."""
    def fail(what):
        raise OSError(code, os.strerror(code), str(what))

    if where == "mkdir":
        real_mkdir = os.mkdir
        monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: fail(p) if Path(p) == root
                            else real_mkdir(p, *a, **k))
        return
    real_open, real_fsync, opened = os.open, os.fsync, {}

    def open_(path, flags, *args, **kwargs):
        ours = Path(path).parent == root and Path(path).name.startswith(f".{name}.")
        if ours and where == "open" and flags & os.O_CREAT:
            fail(path)
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = ours
        return fd

    def fsync(fd):
        if where == "fsync" and opened.get(fd):
            fail(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code, where, name, new", [
    (errno.ENOSPC, "open", "samples.npz", True),     # the first file of a new directory
    (errno.ENOSPC, "fsync", "metrics.json", True),   # the last one, its data written
    (errno.ENOSPC, "fsync", "metrics.json", False),  # the last one, over an earlier run
    (errno.EROFS, "mkdir", "", True),                # the directory cannot be created
    (errno.EROFS, "open", "samples.npz", False),     # nothing can be created in it
])
def test_a_failed_write_is_one_line_and_leaves_no_partial_output(
        weights_only, tmp_path, monkeypatch, code, where, name, new):
    out = tmp_path / "runs" / "out"
    if not new:
        assert CliRunner().invoke(cli, [*QUICK, "--seed", "1", "--out", str(out)]).exit_code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    _inject(monkeypatch, out, code, where, name)
    error = _one_error(CliRunner().invoke(cli, [*QUICK, "--out", str(out)]))
    path = out if where == "mkdir" else out / name
    fix = "free some space" if code == errno.ENOSPC else "writable file system"
    assert error.startswith(f"Error: cannot {'create' if where == 'mkdir' else 'write'} {path}: "
                            f"{os.strerror(code)}; ") and fix in error, error
    if new:
        assert not (tmp_path / "runs").exists()  # the directories it made are gone too
        return
    # what it did not change is kept (the same config.toml, the earlier samples if it
    # could not replace them); what it replaced is removed; never samples without metrics
    left = _listing(out)
    assert "metrics.json" not in left and not [n for n in left if n.endswith(".tmp")]
    for n in left:
        assert (out / n).read_bytes() == before[n]
    with pytest.raises(sdekit.ConfigError, match="does not exist; is .* a finished"):
        sdekit.load_run(out)


def test_a_trained_run_that_cannot_write_its_config_fails_before_training(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _inject(monkeypatch, out, errno.ENOSPC, "open", "config.toml")
    error = _one_error(CliRunner().invoke(cli, [*TRAINED, "--out", str(out)]))
    assert f"cannot write {out / 'config.toml'}: No space left on device; free" in error
    assert not out.exists()


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_checkpoint(
        weights_only, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if Path(str(path)).parent == out and "checkpoint" in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    _inject(monkeypatch, out, errno.ENOSPC, "open", "checkpoint.eqx")
    args = [*TRAINED[:-1], "100", "--out", str(out)]
    error = _one_error(CliRunner().invoke(cli, args))
    assert error.startswith(f"Error: cannot write {out / 'checkpoint.eqx'}: No space left on "
                            f"device; free some space"), error
    assert _listing(out) == ["config.toml"]  # resumable once there is space


def test_a_real_full_disk_and_a_real_file_size_limit(weights_only, tmp_path, monkeypatch):
    """The kernel's own errors: every write of the last file goes to /dev/full (ENOSPC on
    flushing), then a file-size limit below the samples' size (EFBIG, `ulimit -f`)."""
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full device")
    real_fdopen = os.fdopen

    def full(fd, mode="r", *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""
        if ".metrics.json." not in name:
            return real_fdopen(fd, mode, *args, **kwargs)
        os.close(fd)
        return builtins.open("/dev/full", mode)

    out = tmp_path / "full"
    monkeypatch.setattr(os, "fdopen", full)
    error = _one_error(CliRunner().invoke(cli, [*QUICK, "--out", str(out)]))
    assert f"cannot write {out / 'metrics.json'}: No space left on device; free" in error
    assert not out.exists()
    monkeypatch.setattr(os, "fdopen", real_fdopen)

    out = tmp_path / "limited"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ
    try:
        result = CliRunner().invoke(cli, [*QUICK, "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    error = _one_error(result)
    assert f"cannot write {out / 'samples.npz'}: File too large; raise the file-size" in error
    assert not out.exists()


def test_a_device_or_a_read_only_mount_is_never_written_over(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"  # not a regular file, like /dev/full, but ours to lose
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=f"cannot write {fifo}: not a regular file"):
        sio.atomic_write(fifo, b"x")
    assert fifo.is_fifo() and _listing(tmp_path) == ["fifo"]
    assert "not a directory" in _one_error(CliRunner().invoke(cli, [*QUICK, "--out", str(fifo)]))
    fifo.unlink()
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(
        (*real(p)[:8], real(p).f_flag | os.ST_RDONLY, real(p).f_namemax)))
    error = _one_error(CliRunner().invoke(cli, [*QUICK, "--out", str(tmp_path / "out")]))
    assert error == (f"Error: cannot write to {tmp_path / 'out'}: Read-only file system; write "
                     f"to a directory on a writable file system")
    assert _listing(tmp_path) == []


def test_write_files_keeps_what_it_did_not_change(tmp_path, monkeypatch):
    sio.write_files(tmp_path, {"config.toml": "same", "samples.npz": b"old"})
    _inject(monkeypatch, tmp_path, errno.ENOSPC, "fsync", "metrics.json")
    with pytest.raises(OSError) as info:
        sio.write_files(tmp_path, {"samples.npz": b"new", "config.toml": "same",
                                   "metrics.json": "{}"})
    assert info.value.errno == errno.ENOSPC
    assert _listing(tmp_path) == ["config.toml"]  # new samples removed, config untouched


# --------------------------------------------------------------------------------------
# SIGKILL while training and while writing, then --resume

#: The command line in a fresh process, killed (SIGKILL) at a chosen point of writing its
#: outputs: argv[1] is "after:NAME" (NAME written), "before:NAME" (NAME's data written to
#: its temporary file, not yet renamed into place) or "never"; the rest is `sdekit ...`.
_KILLER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import sdekit.io
    from sdekit import _run
    from sdekit.cli import main

    _run.DEFAULT_DIAGNOSTICS = ("weights",)
    when, _, name = sys.argv[1].partition(":")
    write, replace = sdekit.io.atomic_write, os.replace

    def atomic_write(path, data):
        write(path, data)
        if when == "after" and Path(path).name == name:
            os.kill(os.getpid(), signal.SIGKILL)

    def replace_(src, dst, **kwargs):
        if when == "before" and Path(dst).name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst, **kwargs)

    sdekit.io.atomic_write, os.replace = atomic_write, replace_
    main(sys.argv[2:])
''')
#: Each process's limit; compilation, the most of it, is shared through JAX's cache.
TIMEOUT = 240
#: N(1, I) scaled by e^1.5, as user code: no exact samples, so no EUBO to compile.
_TARGET = textwrap.dedent('''
    import jax.numpy as jnp

    def log_prob(x):
        return -0.5 * jnp.sum((x - 1.0) ** 2) - jnp.log(2 * jnp.pi) + 1.5
''')


def _start(tmp_path: Path, point: str, args: list[str]) -> subprocess.Popen:
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, str(script), point, *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.communicate()


def _kill_while_training(proc: subprocess.Popen, checkpoint: Path, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after it writes a checkpoint (a new file at
    `checkpoint`, seen by its inode)."""
    old = checkpoint.stat().st_ino if checkpoint.exists() else None
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() or checkpoint.stat().st_ino == old:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT} s"
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert _finish(proc) == -signal.SIGKILL


def _trained_steps(run: Path) -> int:
    sampler = run_module.compose_config(sdekit.load_config(run / "config.toml"))[0]
    return sdekit.load_checkpoint(sampler, run / "checkpoint.eqx")[1]


def _outputs(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith(".")}


def _same_run(run: Path, whole: Path) -> None:
    """The files of `run` are those of the uninterrupted run `whole`, timings aside."""
    a, b = sio.load_npz(run / "samples.npz"), sio.load_npz(whole / "samples.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    timeless = [{k: v for k, v in json.loads((r / "metrics.json").read_text()).items()
                 if not k.endswith("_seconds")} for r in (run, whole)]
    assert timeless[0] == timeless[1] and "log_Z" in timeless[0]
    for name in ("config.toml", "checkpoint.eqx"):
        assert (run / name).read_bytes() == (whole / name).read_bytes(), name


def _never_half(run: Path, whole: Path) -> str:
    """What a killed run's directory holds: never a result that is not the whole one."""
    names = _listing(run)
    strays = [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert {n for n in names if n not in strays} <= {*run_module.OUTPUT_FILES, "checkpoint.eqx"}
    assert all(n.endswith(".tmp") for n in strays), strays
    if "metrics.json" in names:
        loaded = sdekit.load_run(run)
        _same_run(run, whole)
        assert loaded.metrics["status"] == "ok"
        return "finished"
    with pytest.raises(sdekit.ConfigError, match="does not exist|training steps"):
        sdekit.load_run(run)
    return "refused"


@pytest.mark.slow
def test_a_run_killed_anywhere_and_resumed_is_the_uninterrupted_run(tmp_path):
    """SIGKILL twice at random times during training (after a checkpoint is written),
    then once between two output files and once inside one; `--resume` after each. The
    directory is never a half result, and the end is bit for bit the uninterrupted run."""
    whole, run = tmp_path / "whole", tmp_path / "killed"
    (tmp_path / "target.py").write_text(_TARGET)
    trained = [*TRAINED[:1], f"{tmp_path / 'target.py'}:log_prob", "--set", "target.dim=2",
               *TRAINED[2:]]
    assert _finish(_start(tmp_path, "never", [*trained, "--out", whole])) == 0
    rng, steps = random.Random(20), []
    resume = ["sample", "--resume", run]
    for args in ([*trained, "--out", run], resume):
        delay = rng.uniform(0.0, 0.25)
        _kill_while_training(_start(tmp_path, "never", args), run / "checkpoint.eqx", delay)
        assert _never_half(run, whole) == "refused"
        steps.append(_trained_steps(run))
    assert 0 < steps[0] < 2000 and steps[0] <= steps[1]  # the second kill may land later
    for point in ("after:samples.npz", "before:metrics.json"):
        assert _finish(_start(tmp_path, point, resume)) == -signal.SIGKILL
        assert _never_half(run, whole) == "refused"
    assert _finish(_start(tmp_path, "never", resume)) == 0
    assert _never_half(run, whole) == "finished"
    assert set(_outputs(run)) == {*run_module.OUTPUT_FILES, "checkpoint.eqx"}
    # the traces of a kill inside a write: hidden temporary files, never read; the kill
    # inside metrics.json's leaves one, and a kill in training may land inside a checkpoint's
    hidden = [n for n in _listing(run) if n.startswith(".")]
    assert any(n.startswith(".metrics.json.") for n in hidden), hidden
    assert all(re.fullmatch(r"\.(metrics\.json|checkpoint\.eqx)\.[0-9a-f]+\.tmp", n)
               for n in hidden), hidden
