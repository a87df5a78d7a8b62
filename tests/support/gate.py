"""The gate a test worker app pauses at (tests/support/pause_after_commit.py,
pause_in_task.py): files in the directory `$VCM_TEST_GATE`. The test arms it (creates `armed`),
sees the worker stop there (`waiting` appears), changes the world, then lets it go on (creates
`open`). A prefork child sees the same files as its parent."""

from __future__ import annotations

import os
import time
from pathlib import Path

GATE = Path(os.environ.get("VCM_TEST_GATE", "/nonexistent"))


def pause_if_armed(gate: Path = GATE, limit: float = 120.0) -> None:
    """Wait at the gate (at most `limit` seconds) when the test armed it; disarm it."""
    if not (gate / "armed").exists():
        return
    (gate / "armed").unlink()
    (gate / "waiting").touch()
    deadline = time.monotonic() + limit
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (gate / "open").unlink(missing_ok=True)
