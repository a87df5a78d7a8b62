"""The Celery app (`celery -A tasks ...`) and its tasks, whose names and arguments are the
task API job steps use. Thin: each task checks its arguments and calls workers.service; what a
process needs is built by workers.bootstrap for its role."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.exceptions import Ignore

from tasks import results as _results  # noqa: F401 - query results expire in minutes
from tasks.holding import wait_for_room
from workers.bootstrap import PLACEMENT, QUERIES, Runtime, build
from workers.core.errors import ERRORS, InvalidRequest
from workers.service import Capacity

app = Celery("vcm", task_cls="tasks.messages:CheckedTask")
app.config_from_object("celeryconfig")
log = logging.getLogger("vcm.tasks")
# domain failures are answers, not crashes: Celery logs them without a traceback
EXPECTED = tuple(ERRORS.values())
_runtime: dict[str, Runtime] = {}  # the one runtime of this process, built on first use
_role = {"name": PLACEMENT}  # a worker that does not consume `placement` serves queries


def runtime() -> Runtime:
    if "current" not in _runtime:
        _runtime["current"] = build(app, _role["name"])
    return _runtime["current"]


def service() -> Capacity:
    return runtime().service


def _consumes_placement(app: Celery) -> bool:
    """Whether this worker consumes the placement queue (-Q; all queues without it)."""
    return "placement" in set(app.amqp.queues.consume_from or app.amqp.queues)


@signals.worker_init.connect
def _placement_runs_in_process(sender: Any = None, **_: Any) -> None:
    """The placement worker runs its tasks in its own process (the solo pool), whatever pool
    its command line names: the journal, the ledger floor and the publisher must live in the
    process that commits, and a prefork child would add a pipe round trip to every change.
    Tasks run one at a time anyway (one consumer, one lock), so nothing is lost."""
    from celery import concurrency

    if not _consumes_placement(sender.app):
        return
    pool = concurrency.get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    solo = concurrency.get_implementation("solo")
    if pool is solo or pool is concurrency.get_implementation("threads"):
        return  # same process: the journal engages
    if pool is not concurrency.get_implementation("prefork"):
        log.warning("the placement worker was started with the %s pool; running it with the "
                    "solo pool instead (start it with -P solo to silence this)",
                    pool.__module__.rsplit(".", 1)[-1])
    sender.pool_cls = solo


@signals.celeryd_after_setup.connect
def _setup(sender: str, instance: Any, **_: Any) -> None:
    """Before consuming: check the config, and on the placement side restore the ledger."""
    _role["name"] = PLACEMENT if _consumes_placement(instance.app) else QUERIES
    svc = service()  # an invalid pools file or setting stops start-up here, with its message
    wait_for_room(svc.ledger.r)  # a full Redis: see tasks/holding.py
    if _role["name"] == PLACEMENT:
        svc.ensure_ready(check_mirror=True)


@signals.worker_ready.connect
def _start_publisher(**_: Any) -> None:
    runtime().start_publisher()


@signals.worker_shutting_down.connect
def _stop_publisher(**_: Any) -> None:
    if "current" in _runtime:
        _runtime["current"].stop()


@signals.task_failure.connect
def _count_refusal(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """Refusals by reason (the exception name) for the metrics."""
    if isinstance(exception, EXPECTED) and "current" in _runtime:
        try:
            _runtime["current"].service.ledger.count(f"refused:{type(exception).__name__}")
        except Exception:  # counting must never turn an answer into a crash
            log.debug("refusal not counted", exc_info=True)


def _no_extra(args: tuple, extra: dict[str, Any]) -> None:
    if args:
        raise InvalidRequest.of("args", "pass arguments by name (kwargs)")
    if extra:
        raise InvalidRequest.of(sorted(extra)[0], "unknown argument for this task")


def _answer(task, result: Any) -> Any:
    """With a mirror, a change is answered once the mirror covers it: now when its journal
    already has it, else by the publisher after its next save."""
    svc = service()
    if (svc.mirror is not None and task.request.id and not task.request.is_eager
            and not svc.covered()):
        svc.ledger.defer(task.request.id, result)
        raise Ignore()
    return result


@app.task(name="vcm.acquire", bind=True, throws=EXPECTED)
def acquire(self, request: Any = None, *args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    from workers.service import Parked

    result = service().acquire(request, self.request.id)
    if isinstance(result, Parked):
        self.update_state(state="WAITING", meta=result.meta())
        raise Ignore()
    return _answer(self, result)


@app.task(name="vcm.acquire_batch", bind=True, throws=EXPECTED)
def acquire_batch(self, requests: Any = None, *args: Any,
                  **extra: Any) -> list[list[dict[str, Any]]]:
    _no_extra(args, extra)
    return _answer(self, service().acquire_batch(requests, self.request.id))


@app.task(name="vcm.release", bind=True, throws=EXPECTED)
def release(self, lease_ids: Any = None, owner: Any = None, selector: Any = None, *args: Any,
            **extra: Any) -> list[str]:
    _no_extra(args, extra)
    return _answer(self, service().release(lease_ids, owner, selector))


@app.task(name="vcm.renew", bind=True, throws=EXPECTED)
def renew(self, lease_id: Any = None, owner: Any = None, ttl: Any = None, *args: Any,
          **extra: Any) -> dict:
    _no_extra(args, extra)
    return _answer(self, service().renew(lease_id, owner, ttl))


@app.task(name="vcm.cancel_wait", throws=EXPECTED)
def cancel_wait(task_id: Any = None, *args: Any, **extra: Any) -> bool:
    """Sent by the HTTP shim when a synchronous acquire's client hangs up while it waits."""
    _no_extra(args, extra)
    return service().cancel_wait(task_id)


@app.task(name="vcm.reap_expired", throws=EXPECTED)
def reap_expired(*args: Any, **extra: Any) -> list[str]:
    _no_extra(args, extra)
    return service().reap_expired()


@app.task(name="vcm.prune_namespaces", throws=EXPECTED)
def prune_namespaces(*args: Any, **extra: Any) -> dict[str, Any]:
    """Beat, every VCM_NAMESPACE_PRUNE_INTERVAL: release the leases of namespaces that no
    longer exist (workers/namespaces.py). Releases are placement work: a queries worker
    (read-only) refuses it."""
    _no_extra(args, extra)
    if _role["name"] != PLACEMENT:
        log.warning("vcm.prune_namespaces reached a queries worker; not run (send it to the "
                    "placement queue)")
        return {"state": "refused", "error": "not a placement worker"}
    from workers.namespaces import prune

    return prune(service())


@app.task(name="vcm.show_pools", throws=EXPECTED)
def show_pools(*args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().show_pools()


@app.task(name="vcm.list_leases", throws=EXPECTED)
def list_leases(owner: Any = None, pool: Any = None, after: Any = None, limit: Any = None,
                selector: Any = None, *args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().list_leases(owner, pool, after, limit, selector)


@app.task(name="vcm.estimate", throws=EXPECTED)
def estimate(request: Any = None, *args: Any, **extra: Any) -> dict[str, Any]:
    _no_extra(args, extra)
    return service().estimate(request)


@app.task(name="vcm.waiting", throws=EXPECTED)
def waiting(*args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().waiting()


@app.task(name="vcm.rollup_usage", throws=EXPECTED)
def rollup_usage(*args: Any, **extra: Any) -> dict[str, Any]:
    _no_extra(args, extra)
    svc = service()
    return svc.rollup(svc.settings.usage_retention)


@app.task(name="vcm.usage_history", throws=EXPECTED)
def usage_history(pool: Any = None, since: Any = None, after: Any = None, limit: Any = None,
                  *args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().usage_history(pool, since, after, limit)


@app.task(name="vcm.noop_placement")
def noop_placement() -> None:
    """Benchmark baseline: a task that does nothing, on the placement queue."""


@app.task(name="vcm.sync_inventory", throws=EXPECTED)
def sync_inventory(*args: Any, **extra: Any) -> dict[str, Any]:
    """Beat, every VCM_INVENTORY_INTERVAL: read each vCenter that has credentials and store its
    pools' live health (workers/adapters/inventory.py). On the queries queue: a slow vCenter
    must never hold up placement, so a placement worker refuses to run it."""
    _no_extra(args, extra)
    if _role["name"] == PLACEMENT:
        log.warning("vcm.sync_inventory reached a placement worker; not run (send it to the "
                    "queries queue)")
        return {"synced": {}, "errors": {}, "skipped": [], "refused": "placement worker"}
    from workers.adapters.inventory import sync
    from workers.adapters.ledger import LedgerUnready
    from workers.cli import vcenter_credentials

    svc = service()
    pools = list(svc.pools.current().values())
    try:
        leased = {name: u.storage for name, u in svc.ledger.usage()[1].items()}
    except LedgerUnready:  # being restored: the free-space check waits for the next sync
        leased = None
    return sync(pools, vcenter_credentials(pools, svc.settings), svc.ledger, leased,
                timeout=svc.settings.inventory_timeout).to_dict()
