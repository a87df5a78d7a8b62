"""The Celery app of a worker whose vcm.show_pools, once armed, hangs until the test lets it
go: `celery -A tests.support.pause_in_task worker ...`. A test arms it (creates
`$VCM_TEST_GATE/armed`), sends the task, sees it hang (`waiting` appears), then lets it return
(creates `open`). A task that hangs, on any pool (a prefork child sees the same files), for the
liveness tests only; production code carries no such hook."""

from __future__ import annotations

from tasks import app
from tests.support.gate import pause_if_armed
from workers.service.capacity import Capacity

__all__ = ["app"]
_show_pools = Capacity.show_pools


def _hang_then_show_pools(self: Capacity, *args, **kwargs):
    pause_if_armed()
    return _show_pools(self, *args, **kwargs)


Capacity.show_pools = _hang_then_show_pools  # type: ignore[method-assign]
