"""The Celery app of a placement worker that, once armed, pauses right after a commit, before
it answers: `celery -A tests.support.pause_after_commit worker -Q placement`. A test arms it
(creates `$VCM_TEST_GATE/armed`), sees it wait (`waiting` appears), changes the world (fills
Redis), then lets it go on (creates `open`). For the memory pressure tests only; production
code carries no such hook."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks import app
from workers.adapters.ledger import Ledger

__all__ = ["app"]
_commit = Ledger.commit
GATE = Path(os.environ.get("VCM_TEST_GATE", "/nonexistent"))


def _commit_then_pause(self: Ledger, *args, **kwargs):
    result = _commit(self, *args, **kwargs)
    if result.status == "ok" and (GATE / "armed").exists():
        (GATE / "armed").unlink()
        (GATE / "waiting").touch()
        deadline = time.monotonic() + 120
        while not (GATE / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (GATE / "open").unlink(missing_ok=True)
    return result


Ledger.commit = _commit_then_pause  # type: ignore[method-assign]
