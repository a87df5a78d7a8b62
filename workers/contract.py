"""The task API, declared once: task names, the queue each goes to, and the task states a
client sees. Celery's configuration (celeryconfig.py), the tasks, the CLI and the HTTP shim
read it from here. Plain constants, no imports: Celery's configuration loads it without the
service."""

from __future__ import annotations

# queues: changes to the ledger go one at a time to the placement worker; the rest is queries
PLACEMENT = "placement"
QUERIES = "queries"
QUEUES = (PLACEMENT, QUERIES)


class Task:
    """The task names job steps, the shim and the CLI send."""

    ACQUIRE = "vcm.acquire"
    ACQUIRE_BATCH = "vcm.acquire_batch"
    ADOPT = "vcm.adopt"
    RELEASE = "vcm.release"
    RENEW = "vcm.renew"
    CANCEL_WAIT = "vcm.cancel_wait"
    REAP_EXPIRED = "vcm.reap_expired"
    RELEASE_NAMESPACE_GONE = "vcm.release_namespace_gone"
    SHOW_POOLS = "vcm.show_pools"
    LIST_LEASES = "vcm.list_leases"
    ESTIMATE = "vcm.estimate"
    WAITING = "vcm.waiting"
    ROLLUP_USAGE = "vcm.rollup_usage"
    USAGE_HISTORY = "vcm.usage_history"
    SYNC_INVENTORY = "vcm.sync_inventory"
    PRUNE_NAMESPACES = "vcm.prune_namespaces"


# changes to the ledger, one at a time
PLACEMENT_TASKS = (Task.ACQUIRE, Task.ACQUIRE_BATCH, Task.ADOPT, Task.RELEASE, Task.RENEW,
                   Task.REAP_EXPIRED, Task.CANCEL_WAIT, Task.RELEASE_NAMESPACE_GONE)
# read-only (the inventory sync writes only the live health, never the ledger; the namespace
# prune sends its releases to the placement queue)
QUERY_TASKS = (Task.SHOW_POOLS, Task.LIST_LEASES, Task.ESTIMATE, Task.WAITING,
               Task.ROLLUP_USAGE, Task.USAGE_HISTORY, Task.SYNC_INVENTORY,
               Task.PRUNE_NAMESPACES)
QUEUE = {**dict.fromkeys(PLACEMENT_TASKS, PLACEMENT), **dict.fromkeys(QUERY_TASKS, QUERIES)}

# task states: Celery's, and WAITING (an acquire parked in the waiting line; its meta holds
# position, reasons and deadline)
WAITING = "WAITING"
STATES = ("PENDING", "STARTED", WAITING, "RETRY", "SUCCESS", "FAILURE", "REVOKED")
