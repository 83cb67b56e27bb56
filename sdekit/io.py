"""Files are data: atomic writes, `.npz` arrays, JSON metrics and TOML configurations.

Everything here reads and writes plain data; nothing loaded can execute code
(`.npz` files are read with `allow_pickle=False`, TOML with `tomllib`). `sdekit.run` writes
its files with these functions, and so can a plugin's own command:

```python
sdekit.io.write_files("runs/mine", {"metrics.json": sdekit.io.json_dumps(metrics),
                                    "samples.npz": sdekit.io.npz_bytes(x=x)})
```
"""

import datetime
import errno
import io
import json
import math
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

_TOML_SCALARS = (bool, int, float, str, datetime.date, datetime.time, datetime.datetime)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The bytes go to a hidden temporary file in the same directory, are flushed to disk, and
    the temporary file is renamed over `path` (`os.replace`). On any error the temporary
    file is removed and `path` is untouched; an `OSError` (a full disk, a read-only file
    system) is raised again with a message naming `path`, the cause and what to do. A
    `path` that exists but is not a regular file (a directory, a device) is refused. New
    files get the usual umask permissions.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path.exists() and not path.is_file():  # e.g. /dev/full: never replace a device
        raise _WriteError(f"cannot write {path}: not a regular file; choose another path")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise _write_error("write", path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _write_error("write", path, e) from e
        raise
    _fsync_dir(path.parent)


class _WriteError(OSError):
    """An `OSError` whose message already names the file, the cause and what to do."""


#: What to do when writing fails for each cause (by `errno`).
_FIXES = {
    errno.ENOSPC: "free some space there, or write to another directory",
    errno.EDQUOT: "free some space there, or write to another directory",
    errno.EFBIG: "raise the file-size limit (ulimit -f), or write to another directory",
    errno.EROFS: "write to a directory on a writable file system",
    errno.EACCES: "write to a directory you may write to",
    errno.EPERM: "write to a directory you may write to",
}


def _write_error(action: str, path: Path, e: OSError) -> OSError:
    """`e` (keeping its `errno`) with a one-line message: `cannot {action} {path}: cause; fix`."""
    if isinstance(e, _WriteError):
        return e
    cause = e.strerror or str(e) or type(e).__name__
    fix = _FIXES.get(e.errno) if e.errno is not None else None
    error = _WriteError(f"cannot {action} {path}: {cause}" + (f"; {fix}" if fix else ""))
    error.errno = e.errno
    return error


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported everywhere; the data itself is already on disk
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def npz_bytes(**arrays: Any) -> bytes:
    """The bytes of an uncompressed `.npz` holding `arrays` (converted with `np.asarray`)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read without unpickling anything."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def json_safe(value: Any) -> Any:
    """`value` as strict JSON data: arrays to floats or lists, non-finite floats to `None`."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr.tolist()
    if arr.ndim == 0:
        f = float(arr)
        return f if math.isfinite(f) else None
    return [json_safe(v) for v in arr.astype(float).tolist()]


def json_dumps(value: Any) -> str:
    """Strict (RFC 8259) JSON text: no `NaN` or `Infinity`, which become `null`."""
    return json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"


def is_toml_value(value: Any) -> bool:
    """Whether `value` can be written as a TOML value (and so stored in a config file)."""
    if isinstance(value, float):
        return True  # inf and nan are valid TOML floats
    if isinstance(value, _TOML_SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_toml_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_toml_value(v) for k, v in value.items())
    return False


def toml_dumps(config: Mapping[str, Any]) -> str:
    """`config` as TOML text (tuples written as arrays)."""
    return tomli_w.dumps(_lists(config))


def _lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML file `path` as data (`tomllib.TOMLDecodeError`, a `ValueError`, if invalid)."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def parse_toml_value(text: str) -> Any:
    """`text` read as a TOML value (`1`, `2.5`, `true`, `"s"`, `[1, 2]`), else the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Raise `OSError` unless `path` is, or can be created as, a writable directory.

    Creates nothing: walks up to the nearest existing ancestor and checks that it is a
    directory the user can write into. Returns the absolute path.
    """
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise OSError(f"{probe} is a dangling symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "" if probe == path else f" (its ancestor {probe} is a file)"
        raise NotADirectoryError(f"cannot write to {path}: not a directory{what}")
    if _read_only(probe):
        raise _write_error("write to", path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {path}: {probe} is not writable")
    return path


def _read_only(directory: Path) -> bool:
    """Whether `directory` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will say
        return False


def write_files(directory: str | os.PathLike, files: Mapping[str, bytes | str | None]) -> None:
    """Write each of `files` (name -> content) atomically into `directory`, creating it.

    A `None` content removes a stale file of that name; a file that already holds its
    content is left untouched. If a write fails, the files this call wrote are removed, and
    so is the directory (with the parents it created) if it is new: a failed write leaves no
    partial output, and a file it did not change (e.g. a run's `config.toml`) is kept. An
    `OSError` says which file could not be written, why, and what to do.
    """
    directory = Path(directory)
    created = _missing_ancestors(directory)
    written: list[Path] = []
    try:
        _make_dir(directory)
        for name, data in files.items():
            path = directory / name
            if data is None:
                _remove(path)
            elif not _holds(path, data):
                atomic_write(path, data)
                written.append(path)
    except Exception:
        for path in written:
            path.unlink(missing_ok=True)
        for new in created:
            try:
                new.rmdir()
            except OSError:
                break
        raise


def _missing_ancestors(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    return missing


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error("create", directory, e) from e


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise _write_error("remove", path, e) from e


def _holds(path: Path, data: bytes | str) -> bool:
    """Whether the file `path` exists and holds exactly `data`."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False
