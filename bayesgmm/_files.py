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

__all__ = ["atomic_path", "jsonable", "write_text"]


def temporary_name(path) -> Path:
    """A hidden, unused name beside ``path`` with the same suffix: ``.NAME.tmp-XXXXXXXX.SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")


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
        without an exception; otherwise it is deleted and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give the path of a file to write.")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: its folder {str(path.parent)!r} does not exist; create it first.")
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
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
