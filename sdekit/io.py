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
    file is removed and `path` is untouched. New files get the usual umask permissions.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


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
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {path}: {probe} is not writable")
    return path


def write_files(directory: str | os.PathLike, files: Mapping[str, bytes | str | None]) -> None:
    """Write each of `files` (name -> content) atomically into `directory`, creating it.

    A `None` content removes a stale file of that name. If the directory is new and a
    write fails, what was written is removed with the directory: a failed run leaves
    nothing behind.
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for name, data in files.items():
            if data is None:
                (directory / name).unlink(missing_ok=True)
            else:
                atomic_write(directory / name, data)
                written.append(directory / name)
    except BaseException:
        if created:
            for path in written:
                path.unlink(missing_ok=True)
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
