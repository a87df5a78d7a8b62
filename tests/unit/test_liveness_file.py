"""The worker's liveness file (workers/liveness.py): its modification time is a deadline, set
to now + the bound at each beat; a file that cannot be written never stops the worker; a wait
for Redis counts from the worker's own thread, not from a background one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from workers import liveness
from workers.liveness import LivenessFile


@pytest.fixture()
def disarmed() -> Iterator[None]:
    yield
    liveness.arm(None)


def test_a_beat_sets_the_deadline_and_creates_the_file_and_its_directory(tmp_path):
    path = tmp_path / "run" / "vcm-placement.alive"
    file = LivenessFile(str(path), 300)
    before = time.time()
    file.beat()
    assert before + 300 <= os.stat(path).st_mtime <= time.time() + 300
    os.utime(path, (0, 0))
    file.beat()
    assert os.stat(path).st_mtime >= before + 300


def test_a_file_that_cannot_be_written_is_logged_once_and_never_raises(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    file = LivenessFile(str(tmp_path / "a-file" / "alive"), 300)  # under a file: no directory
    with caplog.at_level(logging.WARNING, logger="workers.liveness"):
        file.beat()
        file.beat()
    assert len([r for r in caplog.records if "cannot write the liveness file" in r.message]) == 1


def test_a_wait_counts_from_the_main_thread_not_from_a_background_one(tmp_path, disarmed):
    path = tmp_path / "alive"
    liveness.arm(LivenessFile(str(path), 300))
    os.utime(path, (0, 0))
    background = threading.Thread(target=liveness.waiting)  # a thread running no task
    background.start()
    background.join()
    assert os.stat(path).st_mtime == 0
    liveness.waiting()
    assert os.stat(path).st_mtime > time.time()


def test_without_a_liveness_file_a_wait_writes_nothing(tmp_path, disarmed):
    liveness.arm(None)
    liveness.waiting()
    assert liveness.armed() is None
    assert list(tmp_path.iterdir()) == []
