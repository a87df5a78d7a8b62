"""The Celery app of a placement worker that, once armed, pauses right after a commit, before
it answers: `celery -A tests.support.pause_after_commit worker -Q placement`. A test arms it
(creates `$VCM_TEST_GATE/armed`), sees it wait (`waiting` appears), changes the world (fills
Redis), then lets it go on (creates `open`). For the memory pressure tests only; production
code carries no such hook."""

from __future__ import annotations

from tasks import app
from tests.support.gate import pause_if_armed
from workers.adapters.ledger import Ledger

__all__ = ["app"]
_commit = Ledger.commit


def _commit_then_pause(self: Ledger, *args, **kwargs):
    result = _commit(self, *args, **kwargs)
    if result.status == "ok":
        pause_if_armed()
    return result


Ledger.commit = _commit_then_pause  # type: ignore[method-assign]
