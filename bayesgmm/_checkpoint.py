"""An experiment's finished tasks kept in a folder, so that an interrupted run continues where it
stopped (:func:`bayesgmm.simulation_study` and :func:`bayesgmm.sbc`, ``checkpoint=``).

A study of hundreds of data sets runs for hours; a job's time limit, a lost connection or
Ctrl-C used to lose every finished data set. With a checkpoint folder each task's result is
written there as soon as it finishes (one file per task, written whole or not at all:
:func:`bayesgmm._files.atomic_path`), and a later call with the same arguments and folder loads
the finished tasks and runs only the others. Tasks are seeded by their position, so the table of
a resumed run equals the uninterrupted run's (its timing columns are those of the run that
computed each task).

The folder's record (:data:`RECORD`) holds the experiment's name, the arguments that decide its
results, the number of tasks and the package version; a call whose record differs (another
seed, grid, engine option or version) is refused, so runs are never mixed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import re
import types
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ._files import atomic_path, jsonable, write_text

#: The record of the experiment whose tasks the folder holds.
RECORD = "bayesgmm-checkpoint.json"

_TASK = re.compile(r"task-(\d+)\.(\w+)$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class Codec(NamedTuple):
    """How one task's result is stored: a file suffix, ``write(value, path)`` and ``read(path)``."""

    suffix: str
    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


#: How deep :func:`describe` follows an object's attributes, closures and defaults.
_DESCRIBE_DEPTH = 6


def describe(value, _depth: int = 0) -> Any:
    """A stable description of an object JSON cannot hold, for a record: the same in every
    process and session (a ``repr`` may hold a memory address, or round an array's numbers) and
    different where the object would act differently.

    A class by ``module:qualname``; a function by that, a digest of its code and the
    descriptions of its defaults and closure (an optimiser's step size lives in a closure); a
    :func:`functools.partial` by its function and arguments; an array by its numbers; an object
    with ``to_dict()`` (a :class:`bayesgmm.Prior`) by that; any other by its ``repr`` when that
    holds no address, else by its type and attributes. Followed :data:`_DESCRIBE_DEPTH` levels
    deep.
    """
    def inner(item):
        if _depth >= _DESCRIBE_DEPTH:
            return f"{type(item).__module__}:{type(item).__qualname__}"
        return jsonable(item, default=lambda v: describe(v, _depth + 1))

    if isinstance(value, functools.partial):
        return {"partial": inner(value.func), "args": inner(list(value.args)), "keywords": inner(dict(value.keywords))}
    name = f"{getattr(value, '__module__', '')}:{getattr(value, '__qualname__', type(value).__qualname__)}"
    if isinstance(value, type):
        return name
    if inspect.isfunction(value):
        code = value.__code__
        digest = hashlib.blake2b(_code_bytes(code), digest_size=8).hexdigest()
        closure = [cell.cell_contents for cell in value.__closure__ or () if _has_contents(cell)]
        return {"function": name, "code": digest, "defaults": inner(list(value.__defaults__ or ())),
                "closure": inner(closure)}
    if inspect.ismethod(value):
        return {"method": name, "of": inner(value.__self__)}
    if inspect.isroutine(value):  # a builtin
        return name
    if hasattr(value, "__array__") and hasattr(value, "dtype"):
        return {"array": str(value.dtype), "values": np.asarray(value).tolist()}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return {"type": type(value).__qualname__, **inner(to_dict())}
    text = repr(value)
    if not _ADDRESS.search(text):
        return text
    state = getattr(value, "__dict__", None)
    kind = f"{type(value).__module__}:{type(value).__qualname__}"
    return {"type": kind, "state": inner(dict(state))} if isinstance(state, dict) else kind


def _code_bytes(code) -> bytes:
    """A function's bytecode and constants, nested functions' code included, without the
    addresses a code object's ``repr`` holds."""
    parts = [code.co_code]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return b"\x00".join(parts)


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _canonical(value) -> Any:
    """``value`` as JSON would give it back (tuples as lists, NumPy values as numbers, objects by
    :func:`describe`), so that a record read from disk compares with a new one."""
    return json.loads(json.dumps(jsonable(value, default=describe)))


def _same(a, b) -> bool:
    """Records compared as JSON text (so that a NaN equals itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class Checkpoint:
    """A folder of one experiment's finished tasks.

    Parameters
    ----------
    folder : str or os.PathLike
        Holds :data:`RECORD` and one ``task-NNNNNN`` file per finished task; created, with its
        record, when the first task is saved.
    experiment : str
        The experiment's name (``"simulation_study"``, ``"sbc"``).
    settings : mapping
        Everything that decides the tasks' results (arguments, seed, precision).
    num_tasks : int
    codec : Codec
    extendable : bool
        Task ``i``'s result does not depend on the number of tasks (SBC's replications): a run
        with more (or fewer) tasks may use the folder, and the number is not compared.

    Raises
    ------
    ValueError
        The folder holds another experiment's tasks, or is not a folder.
    """

    def __init__(self, folder, experiment: str, settings: Mapping, num_tasks: int, codec: Codec, *,
                 extendable: bool = False):
        from . import __version__

        self.folder, self.codec, self.num_tasks = Path(folder), codec, int(num_tasks)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint {str(folder)!r} is a file; give a folder (created if missing).")
        import jax

        settings = {**settings, "backend": jax.default_backend()}  # another platform: other float bits
        self.record = _canonical({"experiment": experiment, "num_tasks": None if extendable else self.num_tasks,
                                  "bayesgmm_version": __version__, "settings": settings})
        path = self.folder / RECORD
        self.recorded = path.is_file()
        if self.recorded:
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ValueError(f"checkpoint record {str(path)!r} cannot be read ({err}); give a new folder.") from None
            if not _same(found, self.record):
                raise ValueError(
                    f"checkpoint folder {str(folder)!r} holds the tasks of another run (it differs in "
                    f"{', '.join(_differences(found, self.record))}); give a new folder, or delete this one to start again.")
        elif self.folder.is_dir() and any(self._task_files()):
            raise ValueError(f"checkpoint folder {str(folder)!r} holds task files but no {RECORD}; give a new folder.")

    def _task_files(self):
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            match = _TASK.match(path.name)
            if match and path.suffix == self.codec.suffix and int(match.group(1)) < self.num_tasks:
                yield int(match.group(1)), path

    def finished(self) -> dict[int, Any]:
        """The finished tasks' results, by task index."""
        found = {}
        for index, path in sorted(self._task_files()):
            try:
                found[index] = self.codec.read(path)
            except (ValueError, OSError, KeyError, TypeError) as err:  # a damaged file: name it, whatever the codec
                raise ValueError(f"checkpoint file {str(path)!r} cannot be read ({' '.join(str(err).split())}); delete "
                                 "it to run that task again.") from err
        return found

    def save(self, index: int, value) -> None:
        """Write task ``index``'s result (whole or not at all); the folder and its record are
        written with the first task, so a run stopped before any task finished leaves nothing."""
        first = not self.recorded
        if first:
            created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text(self.folder / RECORD, json.dumps(self.record, indent=2, allow_nan=True))
            self.recorded = True
        try:
            with atomic_path(self.folder / f"task-{index:06d}{self.codec.suffix}") as tmp:
                self.codec.write(value, tmp)
        except BaseException:
            if first and not finished_task_indices(self.folder):  # (a full disk): a record of nothing is not left
                self.recorded = False
                (self.folder / RECORD).unlink(missing_ok=True)
                if created:
                    with contextlib.suppress(OSError):
                        self.folder.rmdir()
            raise


def _differences(found, record) -> list[str]:
    """Names of the record's entries (settings by name) that differ."""
    if not isinstance(found, dict):
        return ["its record"]
    names = [name for name in ("experiment", "num_tasks", "bayesgmm_version") if not _same(found.get(name), record[name])]
    settings, mine = found.get("settings"), record["settings"]
    if not isinstance(settings, dict):
        return names + ["settings"]
    return names + [name for name in sorted(set(settings) | set(mine)) if not _same(settings.get(name), mine.get(name))]


def finished_task_indices(folder) -> list[int]:
    """The indices of the task files in a checkpoint folder (any experiment, any codec), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _TASK.match(p.name)))


def open_checkpoint(folder, experiment: str, settings: Mapping, num_tasks: int, codec: Codec, *,
                    extendable: bool = False) -> Checkpoint | None:
    """A :class:`Checkpoint`, or None when ``folder`` is None (no checkpoint)."""
    if folder is None:
        return None
    return Checkpoint(folder, experiment, settings, num_tasks, codec, extendable=extendable)


def frame_codec() -> Codec:
    """pandas DataFrames as Parquet files (dtypes and every float bit kept)."""
    import pandas as pd

    return Codec(".parquet", lambda frame, path: frame.to_parquet(path, index=False), pd.read_parquet)


def json_codec(encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Codec:
    """Results as JSON through ``encode`` (to JSON's values) and ``decode``; floats keep every bit
    (Python writes the shortest repr that reads back exactly), NaN included."""

    def write(value, path):
        Path(path).write_text(json.dumps(jsonable(encode(value)), allow_nan=True), encoding="utf-8")

    def read(path):
        return decode(json.loads(Path(path).read_text(encoding="utf-8")))

    return Codec(".json", write, read)


def warning_category(name: str) -> type:
    """The warning class named ``module:qualname`` (as :func:`category_name` writes it);
    UserWarning where it cannot be imported."""
    module, _, qualname = name.partition(":")
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return UserWarning
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def category_name(category: type) -> str:
    """``module:qualname`` of a warning class (read back by :func:`warning_category`)."""
    return f"{category.__module__}:{category.__qualname__}"
