"""Unit tests of the experiments' checkpoint folders (:mod:`bayesgmm._checkpoint`) and of the task
runner that fills them (:func:`bayesgmm._executors.run_tasks`); the studies' and SBC's own
checks are in test_experiments.py, test_calibration.py and test_cli.py."""

import concurrent.futures
import functools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm._checkpoint import RECORD, Checkpoint, Codec, describe, json_codec
from bayesgmm._executors import run_tasks

CODEC = json_codec(lambda value: value, lambda saved: saved)


def test_settings_are_described_without_memory_addresses():
    """A partial or an object whose repr holds an address was recorded by that repr: a second
    process (another address) was refused as another run."""
    for value in (functools.partial(bg.fit_vb, reg_covar=1e-6), bg.fit_vb, object(), {"cb": lambda: 0},
                  np.arange(3.0), bg.Prior.default(np.random.default_rng(0).normal(size=(20, 2)), 2)):
        text = json.dumps(describe(value) if not isinstance(value, dict) else {"cb": describe(value["cb"])})
        assert " at 0x" not in text, text
    partial = describe(functools.partial(bg.fit_vb, reg_covar=1e-6))
    assert partial["partial"]["function"] == "bayesgmm.vb:fit_vb" and partial["keywords"] == {"reg_covar": 1e-6}
    assert describe(np.array([0.1, 1 / 3]))["values"] == [0.1, 1 / 3]  # every bit, not a rounded repr


def test_settings_that_act_differently_are_described_differently():
    """Objects whose repr holds an address were described by their type alone, so a resumed study
    with another optimiser step size (in a closure) or another lambda was accepted and mixed."""
    import numpyro

    def record(value):
        return json.dumps(describe(value), sort_keys=True)

    assert record(numpyro.optim.Adam(1e-3)) == record(numpyro.optim.Adam(1e-3))
    assert record(numpyro.optim.Adam(1e-3)) != record(numpyro.optim.Adam(0.5))
    assert record(lambda x: x + 1) == record(lambda x: x + 1) != record(lambda x: x + 2)

    class Options:
        def __init__(self, rate):
            self.rate = rate

    assert record(Options(1)) == record(Options(1)) != record(Options(2))
    # the same in another process (no addresses, nested code objects included)
    import subprocess
    import sys

    script = ("import json, numpyro; from bayesgmm._checkpoint import describe; "
              "print(json.dumps(describe(numpyro.optim.Adam(1e-3)), sort_keys=True))")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert other == record(numpyro.optim.Adam(1e-3))


def test_a_record_is_written_with_the_first_task_and_compared_exactly(tmp_path):
    folder = tmp_path / "ck"
    settings = {"interval": float("nan"), "engine_kwargs": {}, "grid": (1, 2.0)}
    first = Checkpoint(folder, "study", settings, 3, CODEC)
    assert not folder.exists()  # stopped before any task finished: nothing left behind
    first.save(1, {"x": 1.5})
    assert sorted(p.name for p in folder.iterdir()) == [RECORD, "task-000001.json"]
    again = Checkpoint(folder, "study", settings, 3, CODEC)  # NaN equals itself in the record
    assert again.finished() == {1: {"x": 1.5}}
    with pytest.raises(ValueError, match="differs in grid"):
        Checkpoint(folder, "study", {**settings, "grid": (1, 2.5)}, 3, CODEC)
    with pytest.raises(ValueError, match="differs in num_tasks"):
        Checkpoint(folder, "study", settings, 4, CODEC)


def test_a_failed_first_write_leaves_no_record_and_a_damaged_task_file_is_named(tmp_path):
    """A first task that could not be written (a full disk) left a record of nothing, which a
    rerun took for an interrupted run; a damaged JSON task file gave JSON's own error without
    the file's name."""
    import errno

    def no_space(value, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    folder = tmp_path / "ck"
    full = Checkpoint(folder, "sbc", {}, 2, Codec(".json", no_space, CODEC.read))
    with pytest.raises(OSError, match="No space"):
        full.save(0, {"x": 1.0})
    assert not folder.exists()
    ok = Checkpoint(folder, "sbc", {}, 2, CODEC)
    ok.save(0, {"x": 1.0})
    (folder / "task-000000.json").write_text('{"x": 1.0')  # cut short
    with pytest.raises(ValueError, match=r"checkpoint file '.*task-000000\.json' cannot be read \(Expecting"):
        Checkpoint(folder, "sbc", {}, 2, CODEC).finished()


def test_on_an_executor_a_failure_keeps_what_finished_and_raises_the_first_by_position(tmp_path):
    """Tasks already running when another fails are waited for and saved (they were dropped); the
    error raised is that of the lowest failing position, as in the serial loop."""
    started = []
    lock = threading.Lock()

    def task(i):
        with lock:
            started.append(i)
        if i in (1, 2):
            time.sleep(0.05 * (3 - i))  # 2 fails first, 1 after it
            raise ValueError(f"task {i}")
        time.sleep(0.3 if i == 0 else 0.2)  # 0 still running when the failures come; the rest slow to start
        return i

    folder = tmp_path / "ck"
    checkpoint = Checkpoint(folder, "test", {}, 8, CODEC)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        with pytest.raises(ValueError, match="task 1"):
            run_tasks(task, list(range(8)), (), pool, None, checkpoint)
    saved = Checkpoint(folder, "test", {}, 8, CODEC).finished()
    assert 0 in saved and not {1, 2} & set(saved)
    assert set(saved) == set(started) - {1, 2}  # everything that ran and succeeded was kept
    assert len(started) < 8  # the rest was cancelled
    # the serial loop: the first failure stops it, the tasks before it are kept
    folder2 = tmp_path / "serial"
    with pytest.raises(ValueError, match="task 1"):
        run_tasks(task, list(range(8)), (), None, None, Checkpoint(folder2, "test", {}, 8, CODEC))
    assert Checkpoint(folder2, "test", {}, 8, CODEC).finished() == {0: 0}


def test_interrupted_on_an_executor_the_running_tasks_are_still_saved(tmp_path):
    """Ctrl-C while waiting: the tasks not started are cancelled, and those running are saved when
    they end (they ran to the end anyway, as the pool shuts down, and were thrown away)."""

    def stop_at_one(value, path):  # the interrupt arrives while task 1's result is being kept
        if value == 1:
            raise KeyboardInterrupt
        Path(path).write_text(json.dumps(value))

    codec = Codec(".json", stop_at_one, lambda p: json.loads(Path(p).read_text()))
    folder = tmp_path / "ck"

    def task(i):
        time.sleep(0.4 if i == 0 else 0.0 if i == 1 else 0.2)
        return i

    with pytest.raises(KeyboardInterrupt):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            run_tasks(task, list(range(6)), (), pool, None, Checkpoint(folder, "test", {}, 6, codec))
    saved = Checkpoint(folder, "test", {}, 6, codec).finished()
    assert 0 in saved and 1 not in saved and len(saved) < 5  # 0 was running; most of the rest never started


def test_an_executor_whose_futures_are_not_futures_is_refused_clearly():
    class Odd:
        def submit(self, fn, *args):
            return object()

    with pytest.raises(ValueError, match="not a concurrent.futures.Future"):
        run_tasks(lambda i: i, [0, 1], (), Odd(), None)
