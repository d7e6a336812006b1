"""Unit tests of the experiments' checkpoint folders (:mod:`bayesgmm._checkpoint`) and of the task
runner that fills them (:func:`bayesgmm._executors.run_tasks`); the studies' and SBC's own
checks are in test_experiments.py, test_calibration.py and test_cli.py."""

import concurrent.futures
import functools
import json
import threading
import time

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm._checkpoint import RECORD, Checkpoint, describe, json_codec
from bayesgmm._executors import run_tasks

CODEC = json_codec(lambda value: value, lambda saved: saved)


def test_settings_are_described_without_memory_addresses():
    """A partial or an object whose repr holds an address was recorded by that repr: a second
    process (another address) was refused as another run."""
    for value in (functools.partial(bg.fit_vb, reg_covar=1e-6), bg.fit_vb, object(), {"cb": lambda: 0},
                  np.arange(3.0), bg.Prior.default(np.random.default_rng(0).normal(size=(20, 2)), 2)):
        text = json.dumps(describe(value) if not isinstance(value, dict) else {"cb": describe(value["cb"])})
        assert " at 0x" not in text, text
    assert describe(functools.partial(bg.fit_vb, reg_covar=1e-6)) == {
        "partial": "bayesgmm.vb:fit_vb", "args": [], "keywords": {"reg_covar": 1e-6}}
    assert describe(np.array([0.1, 1 / 3]))["values"] == [0.1, 1 / 3]  # every bit, not a rounded repr


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
