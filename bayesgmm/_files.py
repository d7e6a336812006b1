"""Files written whole or not at all.

:func:`atomic_path` hands out a temporary name beside the destination (same folder, same
suffix, so writers that pick the format from the suffix still do) and renames it onto the
destination only when the writer finished; on any error, or Ctrl-C, the temporary file is
removed and the destination is left as it was. ``os.replace`` is atomic on POSIX and Windows
when both names are on the same file system, which they are (same folder).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["atomic_path", "jsonable", "unjsonable_keys", "write_text"]


#: Longest file name most file systems take (bytes); a temporary name stays within it.
MAX_NAME_BYTES = 255


def temporary_name(path) -> Path:
    """A hidden, unused name beside ``path`` with the same suffix: ``.NAME.tmp-XXXXXXXX.SUFFIX``,
    the stem shortened where the whole would exceed :data:`MAX_NAME_BYTES` (a valid 248-byte
    name could not be written)."""
    path = Path(path)
    tail = f".tmp-{secrets.token_hex(4)}{path.suffix}"
    stem = path.stem
    while stem and len(f".{stem}{tail}".encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return path.with_name(f".{stem}{tail}")


def _flush(path: Path) -> None:
    """Force a file's bytes, or a folder's entries, to the disk where the OS allows it: the
    temporary file before it is renamed over the destination (a rename may reach the disk before
    the data, leaving an empty file after a power loss or an OS crash), its folder after."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Context manager yielding a temporary path to write; renamed onto ``path`` on success.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its folder must exist (else a ValueError, as for a folder's path).

    Yields
    ------
    pathlib.Path
        Where to write. Whatever was written there becomes ``path`` when the block ends
        without an exception (flushed to the disk first; an overwritten file keeps its
        permissions, and a symbolic link the file it names); otherwise it is deleted and
        ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give the path of a file to write.")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: its folder {str(path.parent)!r} does not exist; create it first.")
    if path.is_symlink():  # write the file the link names (replacing the link left that file as it was)
        path = Path(os.path.realpath(path))
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    tmp = temporary_name(path)
    try:
        yield tmp
        if mode is not None:  # an overwritten file keeps its permissions (a private 0600 file became 0644)
            os.chmod(tmp, mode)
        _flush(tmp)
        os.replace(tmp, path)
        _flush(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return Path(path)


def jsonable(value, *, default=None):
    """``value`` with NumPy arrays and scalars turned into JSON's lists and numbers, recursively
    through lists, tuples and mappings (keys become strings). Anything else JSON cannot hold is
    returned as is, or passed through ``default`` (e.g. ``repr``) when given."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(a, default=default) for a in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(a, default=default) for k, a in value.items()}
    return value if default is None else default(value)


#: How :func:`strict_json` writes the floats JSON has no number for; :func:`from_strict_json`
#: reads them back. (Python's ``json`` writes the bare tokens ``NaN`` and ``Infinity``, which
#: strict readers, such as jq, JavaScript and R's jsonlite, refuse.)
NONFINITE_TEXT = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def strict_json(value):
    """``value`` (JSON's types, e.g. from :func:`jsonable`) with every NaN or infinite float
    replaced by the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, recursively: what
    ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, list | tuple):
        return [strict_json(a) for a in value]
    if isinstance(value, Mapping):
        return {k: strict_json(a) for k, a in value.items()}
    return value


def from_strict_json(value):
    """The inverse of :func:`strict_json`: the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` back to floats, recursively (any such string, so a text value that was
    literally "NaN" comes back as a float)."""
    if isinstance(value, str):
        return NONFINITE_TEXT.get(value, value)
    if isinstance(value, list):
        return [from_strict_json(a) for a in value]
    if isinstance(value, dict):
        return {k: from_strict_json(a) for k, a in value.items()}
    return value


def unjsonable_keys(mapping: Mapping) -> list:
    """The keys of ``mapping`` whose values JSON cannot hold even after :func:`jsonable` (sets,
    complex numbers, bytes, arbitrary objects)."""
    import json

    bad = []
    for key, value in mapping.items():
        try:
            json.dumps(jsonable(value))
        except (TypeError, ValueError):
            bad.append(key)
    return bad
