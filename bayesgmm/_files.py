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

__all__ = ["atomic_path", "write_text"]


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
        The destination. Its folder must exist.

    Yields
    ------
    pathlib.Path
        Where to write. Whatever was written there becomes ``path`` when the block ends
        without an exception; otherwise it is deleted and ``path`` is untouched.
    """
    path = Path(path)
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
