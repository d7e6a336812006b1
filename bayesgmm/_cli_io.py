"""The command line's data in and files out: reading tables and bundled data sets, the output
folder written whole or not at all (with its manifest), and the printed tables.

Private to :mod:`bayesgmm.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ._checkpoint import RECORD as CHECKPOINT_RECORD
from ._covariance_models import ALIASES
from .engines import engine_names

#: The engines the command line runs (``--method``), from the registry.
ENGINES = engine_names()
DATASETS = ("faithful", "galaxies")
#: The demo's engine options: NUTS at its defaults (4 chains x (1000 + 1000)); with 500 + 500 the
#: largest R-hat of the demo's fit ranged 1.003-1.013 over ten seeds, so the 1.01 rule flagged some.
DEMO_ENGINES = {"svi": {"num_steps": 3000}}


class UsageError(ValueError):
    """Invalid command-line or configuration input (exit code 2)."""



# ----------------------------------------------------------------------------------------------
# Data in, files out
# ----------------------------------------------------------------------------------------------

def n_init(text: str):
    """``--n-init``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return value

def _read_table(path):
    """A DataFrame from a CSV/TSV/Parquet file; every problem with the file is a UsageError naming it."""
    import pandas as pd

    p = Path(path)
    name = repr(str(path))
    if not p.exists():
        raise UsageError(f"input file {name} does not exist.")
    if p.is_dir():
        raise UsageError(f"input {name} is a folder, not a data file.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        raise UsageError(f"input file {name}: .npy files are read out of core with fit --stream; "
                         "to fit in memory, use .csv, .tsv or .parquet.")
    try:
        if suffix in (".parquet", ".pq"):
            try:
                df = pd.read_parquet(p)
            except ImportError as err:
                raise UsageError(f"reading Parquet needs pyarrow ({err}); pip install pyarrow, or convert to CSV.") from None
            except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
                raise UsageError(f"input file {name} is not a readable Parquet file: {first_line(err)}") from None
        elif suffix in (".csv", ".txt", ".tsv"):
            try:
                df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
            except pd.errors.EmptyDataError:
                raise UsageError(f"input file {name} is empty: no header and no rows.") from None
            except UnicodeDecodeError:
                raise UsageError(f"input file {name} is not a text file (not UTF-8); give a CSV/TSV text file "
                                 "or a Parquet file.") from None
            except pd.errors.ParserError as err:
                raise UsageError(f"input file {name} could not be parsed as {suffix[1:].upper()}: {first_line(err)}") from None
        else:
            raise UsageError(f"input file {name}: unknown format {p.suffix!r}; use .csv, .tsv or .parquet "
                             "(.npy with fit --stream).")
    except OSError as err:  # unreadable (permissions, I/O)
        raise UsageError(f"cannot read input file {name}: {err.strerror or err}.") from None
    if suffix in (".csv", ".txt", ".tsv"):
        _check_header(p, name, "\t" if suffix == ".tsv" else ",")
    if len(df) == 0:
        raise UsageError(f"input file {name} has no data rows (only a header: {list(df.columns)}).")
    return df


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_header(path: Path, name: str, sep: str) -> None:
    """A CSV/TSV file's first line must name the columns: a first line of numbers is a data row,
    which would otherwise silently become the column names (one observation lost). Every row must
    hold as many fields as the header names: with one more in every row pandas takes the first
    column for the rows' index (a column lost, the others renamed), and a short row is filled with
    NaN (a truncated row read as missing values)."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:  # a byte-order mark (Excel's "CSV UTF-8") is no name
        reader = csv.reader(f, delimiter=sep)
        first = next(reader, [])
        for row in reader:
            if row and len(row) != len(first):
                _refuse_row_length(name, sep, first, row, reader.line_num)
    if len(first) == 1 and any(c in first[0] for c in ";\t,"):  # another separator: every row one field
        _refuse_row_length(name, sep, first, None, 1)
    fields = [field.strip() for field in first]
    # numbers, or empty cells (a missing value in the first row), with at least one number
    if any(fields) and all(not field or _is_number(field) for field in fields):
        shown = sep.join(fields) if len(fields) <= 8 else sep.join(fields[:8]) + sep + "..."
        example = sep.join(f"x{j}" for j in range(min(len(fields), 8))) + (sep + "..." if len(fields) > 8 else "")
        raise UsageError(f"input file {name} has no header row: its first line ({shown}) is numbers, a data row, "
                         f"not column names. Add a first line naming the columns (e.g. {example}); if those numbers "
                         "really are column names, rename them so that they are not numbers.")
    named = [field for field in fields if field]
    repeated = sorted({field for field in named if named.count(field) > 1})
    if repeated:  # pandas would rename them (a, a.1) behind the user's back
        raise UsageError(f"input file {name} names column(s) {repeated} more than once; give every column its own name.")


def _refuse_row_length(name: str, sep: str, header: list, row: list | None, line: int):
    """A row of another length than the header (``row`` None: a one-field header holding another separator)."""
    shown = {",": "commas", "\t": "tabs"}[sep]
    used = [what for c, what in ((";", "semicolons"), ("\t", "tabs"), (",", "commas"))
            if c != sep and len(header) == 1 and c in header[0]]
    hint = ""
    if used:
        hint = (f"holding {used[0]}: this reader splits {shown}" +
                (" (give a .tsv file for tabs)" if used[0] == "tabs" else
                 "; write the file with commas between fields and points as decimal marks" if used[0] == "semicolons"
                 else "") + ".")
    if row is None:
        raise UsageError(f"input file {name}: its header {header[0][:80]!r} is one field {hint}")
    raise UsageError(f"input file {name}: line {line} has {len(row)} field(s) where the header names {len(header)} "
                     f"({sep.join(header)[:80]}); every row needs one field per column (an empty field for a missing "
                     f"value)." + (f" Its header is one field {hint}" if hint else ""))


def first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def as_names(value, what: str) -> list:
    """Column names from a string or a list of strings (TOML or the command line)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{what} must be a column name or a list of column names (strings), got {value!r}.")


def load_data(spec: dict):
    """Features (DataFrame) and labels (array or None) from a data spec.

    ``spec``: ``dataset`` (a bundled data set) or ``path`` (CSV/TSV/Parquet), optional
    ``columns`` (the features: a name or a list of names; default every column except the label
    column, all of which must then be numeric) and ``label_column`` (not a feature).
    """
    import numpy as np
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    import bayesgmm as bg

    if not isinstance(spec, dict):
        raise UsageError(f"the data spec must be a table (dataset or path, columns, label_column), got {spec!r}.")
    allowed = {"dataset", "path", "columns", "label_column"}
    unknown = set(spec) - allowed
    if unknown:
        raise UsageError(f"unknown data option(s) {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for key in ("dataset", "path", "label_column"):
        if spec.get(key) is not None and not isinstance(spec[key], (str, os.PathLike)):
            raise UsageError(f"data option {key!r} must be a string, got {spec[key]!r}.")
    if bool(spec.get("dataset")) == bool(spec.get("path")):
        raise UsageError("give exactly one data source: an input file (path) or --dataset " + "|".join(DATASETS) + ".")
    if spec.get("dataset"):
        name = spec["dataset"]
        if name not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; bundled: {DATASETS}.")
        df = bg.datasets.load_faithful(as_frame=True) if name == "faithful" else bg.datasets.load_galaxies(as_frame=True)
        source = f"dataset {name!r}"
    else:
        df = _read_table(spec["path"])
        source = repr(str(spec["path"]))
    if spec.get("columns") is not None and len(as_names(spec["columns"], "columns")) == 0:
        raise UsageError("columns = [] names no feature; list the feature columns, or leave columns out for every "
                         "column except the label column.")
    columns = as_names(spec["columns"], "columns") if spec.get("columns") else None
    label = spec.get("label_column") or None
    if label is not None and columns and label in columns:
        raise UsageError(f"the label column {label!r} cannot also be a feature column; remove it from the columns "
                         f"(the label column is used only for ARI/NMI).")
    missing = [c for c in (columns or []) + ([label] if label else []) if c not in df.columns]
    if missing:
        raise UsageError(f"column(s) {missing} not in {source}; available: {[str(c) for c in df.columns]}.")
    labels = None
    if label is not None:
        empty = df[label].isna().to_numpy()
        if empty.any():
            first = int(np.flatnonzero(empty)[0])  # as the library counts rows (from 0)
            where = f" (first: row {first}, counting from 0"
            where += f"; line {first + 2} of the file)" if spec.get("path") else ")"  # the header is line 1
            raise UsageError(f"label column {label!r} has {int(empty.sum())} empty cell(s){where}; the labels score "
                             "the clusters (ARI/NMI), so every row needs one: fill or drop those rows.")
        labels = df[label].to_numpy()
        df = df.drop(columns=[label])
    if columns:
        df = df[columns]
    else:  # every column is a feature by default: a nameless one is most often a written-out row index
        nameless = [str(c) for c in df.columns if str(c).startswith("Unnamed: ")]
        if nameless and spec.get("path"):
            raise UsageError(f"{source} has column(s) without a name in its header ({nameless}; often a row index "
                             "written by pandas' to_csv): name them, write the file with index=False, or choose the "
                             "features with --columns (columns in a TOML file's [data] table).")
    bad = [str(c) for c, t in zip(df.columns, df.dtypes) if not is_numeric_dtype(t) or is_bool_dtype(t)]
    if bad:
        how = ("choose numeric columns" if columns else
               "by default every column except the label column is a feature; choose numeric ones")
        raise UsageError(f"non-numeric column(s) {bad} in {source}: {how} with --columns (columns in a TOML file's "
                         "[data] table), or encode them as numbers.")
    return df, labels


#: The file every command writes into ``--out``: the command, its options and the files it wrote.
MANIFEST = "bayesgmm_run.json"
_STAGING_PREFIX = ".bayesgmm-staging-"


def _host_tag() -> str:
    """A short tag of this machine, in staging folders' names (a shared file system may hold
    folders of runs on other machines, whose process ids mean nothing here)."""
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _staging_owner(folder: Path):
    """``(host tag, pid)`` of the run a staging folder belongs to (``<prefix><host>-<pid>-<suffix>``,
    as :class:`OutputFolder` names them), None for any other name: a folder of the user's that
    shares the prefix is never taken for a staging folder, nor deleted."""
    import re

    match = re.fullmatch(r"([0-9a-f]{8})-(\d+)-\w+", folder.name[len(_STAGING_PREFIX):], flags=re.ASCII)
    return (match.group(1), int(match.group(2))) if match else None


def _is_staging(path: Path) -> bool:
    return path.name.startswith(_STAGING_PREFIX) and path.is_dir() and _staging_owner(path) is not None


def _stale(folder: Path) -> bool:
    """Whether a staging folder was left by a run that is gone (killed before it could clean up):
    its process no longer runs on this machine. A folder of a run on another machine is taken
    as live."""
    owner = _staging_owner(folder)
    if owner is None:
        return False
    host, pid = owner
    if host != _host_tag():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _removable(folder: Path) -> bool:
    """A killed run's staging folder that holds nothing of an earlier run's: one that set aside
    an earlier run's checkpoint (``--overwrite``) keeps it until it is put back."""
    return _is_staging(folder) and _stale(folder) and not (folder / _EARLIER_CHECKPOINT).exists()


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on ``folder`` between processes (``flock`` on the folder itself, so that
    no lock file appears in it), held while a run's files are moved in; a no-op where the
    platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


#: Name, inside the staging folder, of an earlier run's checkpoint until this run commits.
_EARLIER_CHECKPOINT = ".earlier-checkpoint"


def _restore_earlier_checkpoint(out: Path, checkpoint: Path) -> None:
    """Put back the checkpoint that a killed ``--overwrite`` run set aside in its staging folder
    (``kill -9``, the OOM killer: no clean-up ran), where no checkpoint has taken its place: the
    earlier run's finished data sets are never lost to a run that did not finish. With a
    checkpoint in place (the killed run's own) the set-aside one stays where it is, and the
    folder counts as not empty."""
    for folder in out.iterdir():
        earlier = folder / _EARLIER_CHECKPOINT
        if _is_staging(folder) and _stale(folder) and earlier.is_dir() and not checkpoint.exists():
            os.replace(earlier, checkpoint)
            shutil.rmtree(folder, ignore_errors=True)


class OutputFolder:
    """The ``--out`` folder of one command: one run's files, complete, or nothing.

    Every file is first written into a hidden staging folder inside ``--out`` (named after this
    machine and process); when the command has finished, the files are moved into place together
    and :data:`MANIFEST` records the command and the files it wrote. The move is all or nothing:
    the earlier run's files are set aside first, and put back if any step fails; Ctrl-C (and
    SIGTERM) are held off for those few milliseconds, and other bayesgmm processes committing
    into the same folder wait for it. On an error or an interruption the staging folder is
    deleted: no truncated or partial file is ever left, and an earlier run's files stay as they
    were.

    A folder that is not empty is refused unless ``overwrite``: then the files of the earlier
    run listed in its manifest (read when the new files are moved in) and staging folders of
    killed runs are deleted, so runs are never mixed. Files bayesgmm did not write, the
    command's own ``inputs`` (e.g. ``data.csv`` of an earlier ``simulate`` fitted in place) and
    the staging folders of runs still going are left alone; a new file that would replace one
    of them stops the command before anything is changed. Staging folders of killed runs alone
    do not make a folder non-empty.
    """

    def __init__(self, path, *, overwrite: bool = False, command: str = "", options: dict | None = None,
                 inputs=(), checkpoint: str | None = None, resume: bool = False):
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise UsageError(f"output folder {str(path)!r} exists and is not a folder; give a folder with --out.")
        self.created = []  # the folders this command creates, outermost first
        try:
            made = Path(out.anchor)
            for part in out.parts[len(out.anchor) > 0:]:  # one at a time ("a/../b" makes a and b)
                made = made / part
                if not made.exists():
                    made.mkdir()
                    self.created.append(made)
        except OSError as err:
            self.created, created = [], self.created
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise UsageError(f"cannot create output folder {str(path)!r}: {err.strerror or err}.") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"output folder {str(path)!r} is not writable.")
        if checkpoint is not None:
            _restore_earlier_checkpoint(out, out / checkpoint)
        entries = sorted(p.name for p in out.iterdir() if not _removable(p) and not (resume and p.name == checkpoint))
        if entries and not overwrite:
            running = [n for n in entries if _is_staging(out / n) and not _stale(out / n)]
            kept = [n for n in entries if _is_staging(out / n) and _stale(out / n)]
            shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
            also = (f"; {running[0]} is the staging folder of another bayesgmm run still writing there"
                    if running else "")
            if kept:
                also += (f"; {kept[0]} holds, in {_EARLIER_CHECKPOINT}, the data sets of an earlier interrupted run "
                         "that a killed --overwrite run set aside: move it back to the checkpoint folder to --resume "
                         "that run, or delete it")
            if checkpoint in entries and not resume and (out / checkpoint / CHECKPOINT_RECORD).is_file():
                also += (f"; {checkpoint} holds the data sets of an interrupted run: --resume continues it, "
                         "--overwrite starts afresh")
            raise UsageError(
                f"output folder {str(path)!r} is not empty ({shown}{also}); give a new or empty folder with --out, or "
                "--overwrite to replace the files of the earlier bayesgmm run there (overwrite = true in a TOML file)."
            )
        self.out = out
        self.command = command
        self.options = options or {}
        self.inputs = {Path(p).resolve() for p in inputs}
        #: where the command keeps its finished tasks until it is done (``study``, ``sbc``), or None
        self.checkpoint = None if checkpoint is None else out / checkpoint
        self.stage = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{_host_tag()}-{os.getpid()}-", dir=out))
        self.names: list[str] = []
        self.committed = False

    def _previous_files(self) -> list[Path]:
        """Files of the earlier run now in the folder: its manifest and the files it lists
        (those that exist and are not an input of this command)."""
        manifest = self.out / MANIFEST
        if not manifest.is_file():
            return []
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
        except (ValueError, OSError, AttributeError):
            listed = []
        found = []
        for name in listed:
            if not (isinstance(name, str) and name == Path(name).name and name != MANIFEST):  # a plain file name
                continue
            path = self.out / name
            if (path.is_file() or path.is_symlink()) and path.resolve() not in self.inputs:  # an input is kept
                found.append(path)
        return found + [manifest]

    def _conflicts(self, previous: list[Path], names=None) -> list[str]:
        """The new files (``names``, default those written) that would replace something that is
        not the earlier run's file."""
        ours = {p.name for p in previous}
        found = []
        for name in self.names if names is None else names:
            dest = self.out / name
            if not (dest.exists() or dest.is_symlink()):
                continue
            if dest.resolve() in self.inputs:
                found.append(f"{name} (this command's input)")
            elif dest.is_dir() and not dest.is_symlink():
                found.append(f"{name} (a folder)")
            elif name not in ours:
                found.append(f"{name} (not written by the earlier bayesgmm run there)")
        return found

    def refuse_conflicts_now(self, names) -> None:
        """Stop before the command's work when files it will certainly write (``names``) would
        replace something :meth:`commit` would refuse to replace (a file bayesgmm did not write,
        the command's input, a folder): said after minutes of fitting, nothing was lost but the
        time. :meth:`commit` checks again (the folder may change meanwhile).

        Raises
        ------
        UsageError
            Naming those files.
        """
        with _folder_lock(self.out):
            conflicts = self._conflicts(self._previous_files(), names)
        if conflicts:
            raise UsageError(
                f"output folder {str(self.out)!r}: the results would replace {', '.join(conflicts)}; nothing was "
                "computed or written. Move or rename those, or give another folder with --out.")

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (inside the staging folder)."""
        if name in self.names or name == MANIFEST:
            raise RuntimeError(f"output file {name!r} written twice")
        self.names.append(name)
        return self.stage / name

    @property
    def files(self) -> list[Path]:
        """The final paths of the files written, in the order written, the manifest last."""
        return [self.out / name for name in self.names] + ([self.out / MANIFEST] if self.committed else [])

    def commit(self) -> None:
        """Move the staged files into ``--out`` in place of the earlier run's, all or nothing,
        and write the manifest.

        Raises
        ------
        UsageError
            A new file would replace a file bayesgmm did not write there, the command's input or
            a folder (nothing is changed), or the file system refused a step (everything put back).
        """
        from . import __version__
        from ._files import write_text

        missing = [n for n in self.names if not (self.stage / n).is_file()]
        if missing:
            raise RuntimeError(f"output file(s) {missing} were announced but not written")
        manifest = {"bayesgmm_version": __version__, "command": self.command,
                    "options": self.options, "files": list(self.names)}
        text = json.dumps(manifest, indent=2, default=str)
        with COMMIT_LOCK, _no_interrupt(), _folder_lock(self.out):
            previous = self._previous_files()
            conflicts = self._conflicts(previous)
            if conflicts:
                raise UsageError(
                    f"output folder {str(self.out)!r}: the results would replace {', '.join(conflicts)}; nothing was "
                    "written. Move or rename those, or give another folder with --out.")
            aside = self.stage / ".earlier-run"  # the earlier run's files, until the new ones are in
            aside.mkdir()
            set_aside, moved_in = [], []
            try:
                for old in previous:
                    os.replace(old, aside / old.name)
                    set_aside.append(old)
                for name in self.names:
                    os.replace(self.stage / name, self.out / name)
                    moved_in.append(name)
                write_text(self.out / MANIFEST, text)
            except OSError as err:
                for name in reversed(moved_in):
                    with contextlib.suppress(OSError):
                        os.replace(self.out / name, self.stage / name)
                for old in reversed(set_aside):
                    with contextlib.suppress(OSError):
                        os.replace(aside / old.name, old)
                raise UsageError(f"could not move the results into {str(self.out)!r} ({err.strerror or err}); "
                                 "nothing was changed there.") from None
            self.committed = True
            for stale in self.out.iterdir():  # staging folders of killed runs
                if stale != self.stage and _removable(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            self.discard()

    def replace_checkpoint(self) -> None:
        """Start the command's checkpoint afresh (``--overwrite`` without ``--resume``), keeping the
        earlier run's in the staging folder until this run's files are committed: an error or an
        interruption before then puts it back (:meth:`discard`) unless this run has finished a data
        set of its own, so the earlier data sets are never lost to a run that finished nothing, and
        a run that did is kept for ``--resume`` (the earlier one is what ``--overwrite`` replaces)."""
        if self.checkpoint is not None and self.checkpoint.is_dir():
            os.replace(self.checkpoint, self.stage / _EARLIER_CHECKPOINT)

    def _restore_checkpoint(self) -> None:
        """Put the earlier run's checkpoint back (:meth:`replace_checkpoint`) in place of this
        run's, whose data sets were never written out; nothing to do when none was set aside."""
        earlier = self.stage / _EARLIER_CHECKPOINT
        if self.checkpoint is None or self.committed or not earlier.is_dir():
            return
        if _finished_tasks(self.checkpoint):  # this run's own progress replaces the earlier run's
            shutil.rmtree(earlier, ignore_errors=True)
            return
        for attempt in range(3):  # the main thread may be creating this run's checkpoint meanwhile
            with contextlib.suppress(OSError):
                if self.checkpoint.exists():
                    os.replace(self.checkpoint, self.stage / f".unfinished-checkpoint-{attempt}")
                os.replace(earlier, self.checkpoint)
                return

    def kept_note(self) -> str | None:
        """The line an interrupted command prints about the tasks its checkpoint keeps (None
        when it keeps none)."""
        self._restore_checkpoint()  # an earlier run's, set aside by --overwrite, is what is kept
        if self.checkpoint is None or not self.checkpoint.is_dir():
            return None
        done = _finished_tasks(self.checkpoint)
        if not done:
            return None
        return (f"bayesgmm: the {done} data set(s) finished are kept in {str(self.checkpoint)!r}; run the same "
                "command with --resume to continue.")

    def discard(self) -> None:
        """Delete the staging folder (and the folders this command created for ``--out``, if
        nothing else is in them), having put back an earlier run's checkpoint set aside by
        :meth:`replace_checkpoint` unless this run committed."""
        self._restore_checkpoint()
        if (self.stage / _EARLIER_CHECKPOINT).exists() and not self.committed:
            return  # could not be put back: kept in the staging folder rather than deleted
        shutil.rmtree(self.stage, ignore_errors=True)
        if not self.committed:
            for folder in reversed(self.created):  # innermost first
                try:
                    folder.rmdir()
                except OSError:
                    break


def _finished_tasks(checkpoint) -> int:
    """The data sets a checkpoint folder holds (0 when it does not exist)."""
    with contextlib.suppress(OSError):
        return sum(1 for p in Path(checkpoint).iterdir() if p.name.startswith("task-"))
    return 0


#: held while an output folder is committed: the interrupt watcher of :func:`console_main` waits for it
COMMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_interrupt():
    """Hold Ctrl-C off (SIGINT ignored) for a short critical section; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def figure(fig, path):
    fig.savefig(path, dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)


def print_fit(result, out=None):
    out = sys.stdout if out is None else out
    names = result.feature_names
    layout, model = result.covariance_type, getattr(result, "covariance_model", None)
    shown = layout if model in (None, ALIASES.get(layout)) else f"{model} (a {layout} layout)"
    print(f"{result.method} fit, K={result.num_components}, covariance_type={shown}: "
          f"log-likelihood {result.log_likelihood:.3f}, converged={result.converged} after {result.n_iter} iterations",
          file=out)
    for k in range(result.num_components):
        mean = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, result.means[k]))
        print(f"  component {k}: weight {result.weights[k]:.4f}, mean ({mean})", file=out)
        sd = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, result.full_covariances[k].diagonal() ** 0.5))
        print(f"               sd ({sd})", file=out)
    if result.sample_stats and "num_nonempty" in result.sample_stats:
        post = result.num_components_posterior()
        shown = ", ".join(f"{k}: {p:.3f}" for k, p in post.items() if p >= 0.0005)
        print(f"  posterior of the number of non-empty components: {shown}", file=out)


def fit_figure(result, x):
    from . import plotting

    arr = x.to_numpy(dtype=float) if hasattr(x, "to_numpy") else x
    if arr.shape[1] == 1:
        return plotting.plot_density_1d(result, arr).figure
    if arr.shape[1] == 2:
        return plotting.plot_clusters_2d(result, arr).figure
    return plotting.plot_pairs(result, arr)[0]  # every pair of features, not a projection on the first two


#: The extensions :func:`write_table` writes.
TABLE_FORMATS = ("csv", "md", "tex")


def table_files(stem: str) -> list[str]:
    """The files :func:`write_table` writes for ``stem``."""
    return [f"{stem}.{ext}" for ext in TABLE_FORMATS]


#: Characters of a failed fit's message in the Markdown and LaTeX tables (the .csv keeps it whole).
ERROR_CELL_CHARS = 60


def write_table(table, out: "OutputFolder", stem: str, *, note: str | None = None) -> None:
    """``stem.csv`` (every column, full precision) and, for papers, ``stem.md`` and ``stem.tex``
    (:func:`bayesgmm.reporting.to_markdown` / :func:`~bayesgmm.reporting.to_latex`; a ``method``
    column there names the engines as the figures do, "NUTS" for ``mcmc``). ``note``
    (e.g. a criterion's sign convention) follows the Markdown table and ends the LaTeX caption."""
    from .reporting import DISPLAY_NAMES, to_latex, to_markdown

    table.to_csv(out.path(f"{stem}.csv"), index=False)
    if "method" in table.columns:  # for papers the engines as the figures name them (NUTS, not mcmc)
        table = table.assign(method=[DISPLAY_NAMES.get(m, m) for m in table["method"]])
    if "error" in table.columns:  # a failed fit's message, whole in the .csv; a page-wide cell shrank the .tex to nothing
        table = table.assign(error=[e[: ERROR_CELL_CHARS - 3].rstrip() + "..." if isinstance(e, str) and len(e) > ERROR_CELL_CHARS
                                    else e for e in table["error"]])
    out.path(f"{stem}.md").write_text(to_markdown(table) + (f"\n{note}\n" if note else ""))
    caption = stem.replace("_", " ") + (f". {note}" if note else "")
    out.path(f"{stem}.tex").write_text(to_latex(table, caption=caption, label=f"tab:{stem}"))


def table_json(table) -> str:
    """The table as JSON records, every float exactly (Python's shortest round-trip repr; pandas'
    ``to_json`` keeps 10 significant digits), NaN and infinities as null (as pandas writes them)."""
    import json
    import math

    import numpy as np

    def plain(value):
        if isinstance(value, np.generic):
            value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value

    records = [{str(name): plain(value) for name, value in row.items()} for row in table.to_dict(orient="records")]
    return json.dumps(records, indent=2, default=str)


def print_table(table, columns, out=None):
    out = sys.stdout if out is None else out
    import pandas as pd

    shown = table[[c for c in columns if c in table.columns]]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(shown.to_string(index=False), file=out)


def wrote(written):
    print("wrote " + ", ".join(str(p) for p in written))


def print_features(x, labels_column=None, out=None):
    """Say which columns are the features (and which one holds the labels)."""
    out = sys.stdout if out is None else out
    names = [str(c) for c in x.columns]
    label = f"; label column {labels_column!r} (not a feature)" if labels_column else ""
    print(f"features ({len(names)}): {', '.join(names)}{label}; {len(x)} rows", file=out)


