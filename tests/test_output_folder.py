"""The command line's output folder: one run's files, complete, or nothing; never a file that
bayesgmm did not write, and never another run's work."""

import json
import os
import subprocess
import sys

import pytest

from bayesgmm import _cli_io
from bayesgmm._cli_io import MANIFEST, OutputFolder, UsageError


def _listing(folder):
    """{name: bytes} of every entry of ``folder`` (hidden ones included; None for folders)."""
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def _run(out, files: dict, **kwargs) -> OutputFolder:
    """One committed run that writes ``files`` ({name: text}) into ``out``."""
    folder = OutputFolder(out, command="test", **kwargs)
    for name, text in files.items():
        folder.path(name).write_text(text)
    folder.commit()
    return folder


def _staging_of(pid: int) -> str:
    return f"{_cli_io._STAGING_PREFIX}{_cli_io._host_tag()}-{pid}-abc123"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_overwrite_replaces_the_earlier_runs_files_only(tmp_path):
    out = tmp_path / "o"
    _run(out, {"a.csv": "first", "b.json": "first"})
    (out / "notes.txt").write_text("mine")
    _run(out, {"a.csv": "second", "c.png": "second"}, overwrite=True)
    assert _listing(out) == {"a.csv": b"second", "c.png": b"second", "notes.txt": b"mine",
                             MANIFEST: (out / MANIFEST).read_bytes()}
    assert json.loads((out / MANIFEST).read_text())["files"] == ["a.csv", "c.png"]


@pytest.mark.parametrize("what", ["user file", "input", "folder"])
def test_a_result_never_replaces_what_bayesgmm_did_not_write(tmp_path, what):
    """--overwrite replaces the earlier run's files; a new file whose name is taken by a file the
    earlier run did not write (or by the command's input, or a folder) stops the commit before
    anything changes."""
    out = tmp_path / "o"
    _run(out, {"x.json": "earlier run"})
    inputs = []
    if what == "folder":
        (out / "data.csv").mkdir()
    else:
        (out / "data.csv").write_text("the user's data")
        if what == "input":  # even one the earlier run listed: this command reads it
            (out / MANIFEST).write_text(json.dumps({"files": ["x.json", "data.csv"]}))
            inputs = [out / "data.csv"]
    before = _listing(out)
    folder = OutputFolder(out, command="test", overwrite=True, inputs=inputs)
    folder.path("data.csv").write_text("a result")
    folder.path("y.json").write_text("a result")
    with pytest.raises(UsageError, match=r"would replace data\.csv \((this command's input|a folder|not written by "
                                         r"the earlier bayesgmm run there)\); nothing was written"):
        folder.commit()
    folder.discard()
    assert _listing(out) == before


def test_a_failed_move_puts_everything_back(tmp_path, monkeypatch):
    out = tmp_path / "o"
    _run(out, {"a.csv": "first", "b.json": "first"})
    before = _listing(out)
    folder = OutputFolder(out, command="test", overwrite=True)
    for name in ("a.csv", "c.json", "d.png"):
        folder.path(name).write_text("second")
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("d.png"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(_cli_io.os, "replace", failing)
    with pytest.raises(UsageError, match="No space left on device.*nothing was changed"):
        folder.commit()
    monkeypatch.setattr(_cli_io.os, "replace", real)
    folder.discard()
    assert _listing(out) == before


def test_runs_into_one_folder_leave_each_others_staging_alone_and_never_mix(tmp_path):
    """A staging folder of a run still going (its process alive on this machine) is left alone
    (and makes the folder non-empty); one of a killed run is removed (and does not). Two runs
    with --overwrite: the one that commits last replaces the files of the one before it."""
    out = tmp_path / "o"
    out.mkdir()
    live = out / _staging_of(os.getppid())
    live.mkdir()
    (live / "partial.nc").write_text("being written")
    with pytest.raises(UsageError, match="staging folder of another bayesgmm run still writing there"):
        OutputFolder(out, command="test")
    first = OutputFolder(out, command="test", overwrite=True)
    second = OutputFolder(out, command="test", overwrite=True)
    first.path("one.json").write_text("1")
    second.path("two.json").write_text("2")
    first.commit()
    second.commit()
    assert set(_listing(out)) == {live.name, "two.json", MANIFEST}
    assert (live / "partial.nc").read_text() == "being written"

    live.rename(out / _staging_of(_dead_pid()))  # now a killed run's
    (out / "two.json").unlink()
    (out / MANIFEST).unlink()
    _run(out, {"three.json": "3"})  # the folder counts as empty; the leftover goes at the commit
    assert set(_listing(out)) == {"three.json", MANIFEST}


def test_a_folder_of_the_users_named_like_a_staging_folder_is_kept(tmp_path):
    """A folder of the user's whose name starts with the staging prefix was taken for an older
    version's staging folder: ignored when --out was checked for being empty, and deleted, with
    its files, at the commit of a run without --overwrite."""
    out = tmp_path / "o"
    notes = out / f"{_cli_io._STAGING_PREFIX}notes"
    notes.mkdir(parents=True)
    (notes / "thesis.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        OutputFolder(out, command="test")
    _run(out, {"a.json": "1"}, overwrite=True)
    assert (notes / "thesis.txt").read_text() == "mine"


def test_a_checkpoint_set_aside_by_a_killed_overwrite_run_is_never_lost(tmp_path):
    """--overwrite sets the earlier run's checkpoint aside in its staging folder until it commits;
    a run killed outright (kill -9, the OOM killer) cleaned nothing up, and the next commit into
    the folder deleted its staging folder, the earlier run's finished data sets with it. They are
    put back where no checkpoint has taken their place, else kept and named."""
    out = tmp_path / "o"
    killed = out / _staging_of(_dead_pid())
    (killed / _cli_io._EARLIER_CHECKPOINT).mkdir(parents=True)
    (killed / _cli_io._EARLIER_CHECKPOINT / "task-0.json").write_text("finished data set")
    (out / "checkpoint").mkdir()  # the killed run's own checkpoint: the earlier one stays aside
    with pytest.raises(UsageError, match=r"holds, in \.earlier-checkpoint, the data sets of an earlier interrupted run"):
        OutputFolder(out, command="test", checkpoint="checkpoint")
    _run(out, {"a.json": "1"}, overwrite=True, checkpoint="checkpoint")
    assert (killed / _cli_io._EARLIER_CHECKPOINT / "task-0.json").is_file()  # not deleted at the commit
    (out / "checkpoint").rmdir()  # none in its place: the next run puts it back
    folder = OutputFolder(out, command="test", overwrite=True, checkpoint="checkpoint")
    assert (out / "checkpoint" / "task-0.json").read_text() == "finished data set" and not killed.exists()
    folder.discard()


def test_a_failed_run_removes_every_folder_it_created(tmp_path):
    folder = OutputFolder(tmp_path / "a" / "b" / "c", command="test")
    folder.path("x.json").write_text("never committed")
    folder.discard()
    assert list(tmp_path.iterdir()) == []
    folder = OutputFolder(tmp_path / "zz" / ".." / "yy", command="test")  # makes zz and yy (zz was left)
    folder.discard()
    assert list(tmp_path.iterdir()) == []
