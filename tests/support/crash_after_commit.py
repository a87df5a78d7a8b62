"""The Celery app of a placement worker that dies right after its first commit, before it
answers: `celery -A tests.support.crash_after_commit worker -Q placement -P solo`. For the
crash tests only; production code carries no such hook."""

from __future__ import annotations

import os

from tasks import app
from workers.adapters.ledger import Ledger

__all__ = ["app"]
_commit = Ledger.commit


def _commit_then_die(self: Ledger, *args, **kwargs):
    result = _commit(self, *args, **kwargs)
    if result.status == "ok":
        os._exit(137)
    return result


Ledger.commit = _commit_then_die  # type: ignore[method-assign]
