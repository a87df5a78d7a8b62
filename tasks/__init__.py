"""The Celery app (`celery -A tasks ...`) and its tasks, whose names and arguments are the
task API job steps use. Thin: each task checks its arguments and calls workers.service; what a
process needs is built by workers.bootstrap for its role."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, signals
from celery.exceptions import Ignore

from tasks import results as _results  # noqa: F401 - query results expire in minutes
from tasks.holding import wait_for_room
from tasks.liveness import LivenessStep
from workers.adapters.redis_memory import hold
from workers.adapters.replies import shutting_down
from workers.bootstrap import Runtime, build, cannot_start, require_valid_pools
from workers.contract import PLACEMENT, QUERIES, WAITING, Task
from workers.core.errors import ERRORS, InvalidRequest
from workers.service.capacity import Capacity

app = Celery("vcm", task_cls="tasks.messages:CheckedTask")
app.config_from_object("celeryconfig")
# the liveness file's beats on the worker's event loop and its consumer's restarts (the
# consumer's retries to connect beat it too: worker_consumer in celeryconfig.py)
app.steps["consumer"].add(LivenessStep)
log = logging.getLogger(__name__)
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
    return PLACEMENT in set(app.amqp.queues.consume_from or app.amqp.queues)


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


@signals.worker_init.connect
def _build_runtime(sender: Any = None, **_: Any) -> None:
    """Before the worker starts anything: take the role from the queues it consumes and build
    the runtime, which reads the settings and the pools file. Whatever fails here stops
    start-up with its message (an invalid pools file names the file, the pool and the field):
    a worker that cannot build its runtime would report ready and fail every task."""
    _role["name"] = PLACEMENT if _consumes_placement(sender.app) else QUERIES
    try:
        runtime()
    except Exception as exc:  # noqa: BLE001 - every cause stops start-up, with its message
        cannot_start(exc)


@signals.celeryd_after_setup.connect
def _setup(sender: str, instance: Any, **_: Any) -> None:
    """Before consuming: wait while Redis is full (tasks/holding.py), then, on the placement
    side, restore the ledger (from the mirror when Redis lost it) and compare it with the
    mirror. Redis not answering yet is no reason to stop (the worker waits for its broker, and
    the ledger is checked again before the first change); anything else is (e.g. a mirror
    that cannot be read while Redis is empty)."""
    try:
        svc = service()
        wait_for_room(svc.ledger.memory_use)
        if _role["name"] == PLACEMENT:
            svc.ensure_ready(check_mirror=True)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("the ledger was not checked at start (Redis: %s); it is checked before "
                    "the first change", exc)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot serve stops
        cannot_start(exc)


@signals.worker_ready.connect
def _start_publisher(**_: Any) -> None:
    try:
        runtime().start_publisher()
    except Exception as exc:  # noqa: BLE001 - answers would be held for ever without it
        cannot_start(exc)


@signals.beat_init.connect
def _beat_checks_the_pools(**_: Any) -> None:
    """Beat does not read the pools file, but it is one of the processes a deployment starts
    with it: an invalid file stops it too, naming the file, the pool and the field."""
    require_valid_pools()


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
    already has it, else by the publisher after its next save. The change is made: an answer
    a full Redis refuses to hold for the publisher is held here until Redis takes it (the
    client gets its leases, not RedisFull for a grant it holds)."""
    svc = service()
    task_id = task.request.id
    if svc.mirror is not None and task_id and not task.request.is_eager and not svc.covered():
        hold(lambda: svc.ledger.defer(task_id, result),
             getattr(task.app.backend, "client", None), f"the answer of task {task_id}",
             shutting_down)
        raise Ignore()
    return result


@app.task(name=Task.ACQUIRE, bind=True, throws=EXPECTED)
def acquire(self, request: Any = None, *args: Any, **extra: Any) -> list[dict[str, Any]]:
    try:
        _no_extra(args, extra)
    except InvalidRequest as exc:  # the task id's answer: every copy of the task gets it too
        return _answer(self, service().refuse(self.request.id, exc)[0])
    from workers.service.waiting import Parked

    result = service().acquire(request, self.request.id)
    if isinstance(result, Parked):
        self.update_state(state=WAITING, meta=result.meta())
        raise Ignore()
    return _answer(self, result)


@app.task(name=Task.ACQUIRE_BATCH, bind=True, throws=EXPECTED)
def acquire_batch(self, requests: Any = None, *args: Any,
                  **extra: Any) -> list[list[dict[str, Any]]]:
    try:
        _no_extra(args, extra)
    except InvalidRequest as exc:  # the task id's answer: every copy of the task gets it too
        return _answer(self, service().refuse(self.request.id, exc))
    return _answer(self, service().acquire_batch(requests, self.request.id))


@app.task(name=Task.ADOPT, bind=True, throws=EXPECTED)
def adopt(self, request: Any = None, holdings: Any = None, *args: Any,
          **extra: Any) -> list[dict[str, Any]]:
    """Record what a lease granted elsewhere holds (workers/service/adopting.py); sent by the
    Lease controller for a Lease another controller fulfilled."""
    _no_extra(args, extra)
    return _answer(self, service().adopt(request, holdings))


@app.task(name=Task.RELEASE, bind=True, throws=EXPECTED)
def release(self, lease_ids: Any = None, owner: Any = None, selector: Any = None, *args: Any,
            **extra: Any) -> list[str]:
    _no_extra(args, extra)
    return _answer(self, service().release(lease_ids, owner, selector))


@app.task(name=Task.RENEW, bind=True, throws=EXPECTED)
def renew(self, lease_id: Any = None, owner: Any = None, ttl: Any = None, *args: Any,
          **extra: Any) -> dict:
    _no_extra(args, extra)
    return _answer(self, service().renew(lease_id, owner, ttl))


@app.task(name=Task.CANCEL_WAIT, throws=EXPECTED)
def cancel_wait(task_id: Any = None, *args: Any, **extra: Any) -> bool:
    """Sent by the HTTP shim when a synchronous acquire's client hangs up while it waits."""
    _no_extra(args, extra)
    return service().cancel_wait(task_id)


@app.task(name=Task.REAP_EXPIRED, throws=EXPECTED)
def reap_expired(*args: Any, **extra: Any) -> list[str]:
    _no_extra(args, extra)
    return service().reap_expired()


@app.task(name=Task.PRUNE_NAMESPACES, throws=EXPECTED)
def prune_namespaces(*args: Any, **extra: Any) -> dict[str, Any]:
    """Beat, every VCM_NAMESPACE_PRUNE_INTERVAL: release the leases of namespaces that no
    longer exist (workers/service/namespaces.py). On the queries queue: the namespace list may
    be slow and placement must never wait for it, so a placement worker refuses to run it; only
    the release goes to the placement queue (vcm.release_namespace_gone)."""
    _no_extra(args, extra)
    if _role["name"] == PLACEMENT:
        log.warning("vcm.prune_namespaces reached a placement worker; not run (send it to the "
                    "queries queue)")
        return {"state": "refused", "error": "placement worker"}
    from workers.service.namespaces import prune

    return prune(service(), _release_gone)


RELEASE_WAIT = 30.0  # how long a prune waits for the placement worker's answer to its release


def _release_gone(lease_ids: list[str]) -> list[str]:
    """Send a release of these leases (their namespaces are gone) to the placement worker and
    wait for its answer: the ids it released. ReleasePending when it does not come in time."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from workers.service.namespaces import ReleasePending

    result = app.send_task(Task.RELEASE_NAMESPACE_GONE, kwargs={"lease_ids": lease_ids},
                           queue=PLACEMENT)
    try:  # another queue's worker answers: waiting here cannot deadlock
        return result.get(timeout=RELEASE_WAIT, disable_sync_subtasks=False)
    except ResultTimeout:
        raise ReleasePending(result.id) from None


@app.task(name=Task.RELEASE_NAMESPACE_GONE, bind=True, throws=EXPECTED)
def release_namespace_gone(self, lease_ids: Any = None, *args: Any,
                           **extra: Any) -> list[str]:
    """Sent by vcm.prune_namespaces: release these leases, whose namespaces are gone, with
    reason namespace-gone. By lease id: a late or repeated copy releases those leases only."""
    _no_extra(args, extra)
    if _role["name"] != PLACEMENT:
        raise InvalidRequest.of("queue", "releases are placed by the placement worker: send "
                                "vcm.release_namespace_gone to the placement queue")
    from workers.service.namespaces import release_gone

    return _answer(self, release_gone(service(), lease_ids))


@app.task(name=Task.SHOW_POOLS, throws=EXPECTED)
def show_pools(*args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().show_pools()


@app.task(name=Task.LIST_LEASES, throws=EXPECTED)
def list_leases(owner: Any = None, pool: Any = None, after: Any = None, limit: Any = None,
                selector: Any = None, *args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().list_leases(owner, pool, after, limit, selector)


@app.task(name=Task.ESTIMATE, throws=EXPECTED)
def estimate(request: Any = None, *args: Any, **extra: Any) -> dict[str, Any]:
    _no_extra(args, extra)
    return service().estimate(request)


@app.task(name=Task.WAITING, throws=EXPECTED)
def waiting(*args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().waiting()


@app.task(name=Task.ROLLUP_USAGE, throws=EXPECTED)
def rollup_usage(*args: Any, **extra: Any) -> dict[str, Any]:
    _no_extra(args, extra)
    svc = service()
    return svc.rollup(svc.settings.usage_retention)


@app.task(name=Task.USAGE_HISTORY, throws=EXPECTED)
def usage_history(pool: Any = None, since: Any = None, after: Any = None, limit: Any = None,
                  *args: Any, **extra: Any) -> list[dict[str, Any]]:
    _no_extra(args, extra)
    return service().usage_history(pool, since, after, limit)


@app.task(name=Task.SYNC_INVENTORY, throws=EXPECTED)
def sync_inventory(*args: Any, **extra: Any) -> dict[str, Any]:
    """Beat, every VCM_INVENTORY_INTERVAL: read each vCenter that may be contacted (a credential
    meant for it, a certificate check: workers/adapters/vcenter/access.py) and store its
    pools' live health (workers/adapters/vcenter/inventory.py). On the queries queue: a slow vCenter
    must never hold up placement, so a placement worker refuses to run it."""
    _no_extra(args, extra)
    if _role["name"] == PLACEMENT:
        log.warning("vcm.sync_inventory reached a placement worker; not run (send it to the "
                    "queries queue)")
        return {"synced": {}, "errors": {}, "skipped": {}, "refused": "placement worker"}
    from workers.adapters.vcenter.access import plan
    from workers.adapters.vcenter.inventory import sync
    from workers.core.errors import LedgerUnready

    svc = service()
    pools = list(svc.pools.current().values())
    try:
        leased = {name: u.storage for name, u in svc.ledger.usage()[1].items()}
    except LedgerUnready:  # being restored: the free-space check waits for the next sync
        leased = None
    access = plan((p.vcenter for p in pools), svc.settings)
    return sync(pools, access, svc.ledger, leased,
                timeout=svc.settings.inventory_timeout).to_dict()
