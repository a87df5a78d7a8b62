"""All Celery settings. Broker and result backend are Redis (VCM_REDIS_URL); JSON only.

The VCM_* values come from `workers.settings.Settings`, read once here (a bad one stops start-up
with a message naming it)."""

from workers import contract
from workers.redis_url import celery_settings
from workers.settings import Settings

_settings = Settings.from_env()

broker_connection_retry_on_startup = True
# a full Redis (noeviction, deploy/redis.yaml) refuses even the reads kombu sends in MULTI: the
# worker's consumer retries, as after a lost connection, instead of the worker exiting
broker_channel_error_retry = True
# an unacked task (its worker died) is redelivered after this; placement tasks take milliseconds
_visibility = _settings.visibility_timeout
broker_transport_options = {
    "visibility_timeout": _visibility,
    # sweep for unacked tasks of dead workers often enough to honour the timeout
    "unacked_restore_interval": max(1, min(10, _visibility // 2)),
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# broker_url and result_backend: VCM_REDIS_URL without its query; the query's options
# (`?socket_timeout=3`, docs/settings.md) as the settings kombu and Celery read them from
# instead: the broker's transport options above, broker_use_ssl, and the result backend's
# redis_socket_timeout, redis_socket_connect_timeout, redis_backend_health_check_interval,
# redis_socket_keepalive, redis_retry_on_timeout and redis_backend_use_ssl, over vcm's own
# (workers/redis_url.py: 5 s to connect, 30 s per reply, a health check after 30 s idle)
globals().update(celery_settings(_settings.redis_url, broker_transport_options))

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

# each task to its queue (workers/contract.py): changes to the ledger to the placement worker,
# one at a time; queries elsewhere (their results are kept only minutes: query_result_expires,
# see tasks/results.py). Sent without declaring the queue (`declare`: none, where Celery would
# declare it): Celery puts a task straight on its queue's list (kombu's anonymous exchange), so
# a declare only writes kombu's binding set, which a worker writes itself for the queues it
# consumes. kombu runs that declare under a retry of its own inside the publish's retry: when
# Redis refuses the declare (full) and takes its retry, the publish goes on with the channel
# that retry closed: AttributeError ('NoneType' object has no attribute 'client'), nothing
# queued (tests/redis/test_send_retry.py). Without it a refused publish is retried whole, on a
# fresh channel.
task_routes = {name: {"queue": queue, "declare": ()} for name, queue in contract.QUEUE.items()}
task_default_queue = contract.QUERIES
task_create_missing_queues = True

# Each setting below that is not Celery's default costs every task something (what each costs:
# `python -m bench.bench_celery_settings`); each is here for the feature its comment names.

# crash safety: a task whose worker died mid-task is redelivered, and answered from the ledger's
# request-id record instead of being placed twice (request-id, Lua commit)
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# the HTTP shim: STARTED (a result write per task) tells "a worker holds it" from "still queued":
# a reply held until the mirror covers it, or a long task on the solo worker, which answers no
# pings meanwhile; its waits, 504 details and GET /tasks/{id} show it
task_track_started = True
# GET /tasks/{id} shows the task name from the result for ids the shim did not record (a
# synchronous answer's X-VCM-Task-Id, tasks sent with Celery directly); Flower does not need it
result_extended = True
# placement results: a job step that polls finds its answer for this long
result_expires = int(_settings.result_ttl)
# query results: for whoever waits for them now (tasks/results.py shortens them after storing)
query_result_expires = int(min(_settings.query_result_ttl, result_expires))
task_ignore_result = False

# Flower (operators watch every task): task-received gives it the name and arguments,
# task-succeeded/failed the outcome
worker_send_task_events = True
# no task-sent events (Celery's default; they cost the client a PUBLISH per task): Flower lists a
# task from its task-received on, so a task still in the queue shows only in the queue's length
task_send_sent_event = False
worker_hijack_root_logger = False
worker_redirect_stdouts = False
worker_cancel_long_running_tasks_on_connection_loss = False
# Celery's consumer, whose retries to connect to Redis keep the worker's liveness file ahead
# (tasks/liveness.py): the liveness probe must not fail while Redis is down
worker_consumer = "tasks.liveness:Consumer"


# exactly one beat may run: two would reap and roll up twice (harmless, but wasteful and noisy)
beat_schedule = {
    "reap-expired-leases": {
        "task": contract.Task.REAP_EXPIRED,
        "schedule": _settings.reap_interval,
        "options": {"queue": contract.PLACEMENT, "expires": 60},
    },
    "rollup-usage": {
        "task": contract.Task.ROLLUP_USAGE,
        "schedule": _settings.rollup_interval,
        "options": {"queue": contract.QUERIES, "expires": 60},
    },
}
# namespace-bound leases (workers/service/namespaces.py): VCM_NAMESPACE_PRUNE_INTERVAL,
# 0 or off: never
if _settings.namespace_prune_interval is not None:
    beat_schedule["prune-namespaces"] = {
        "task": contract.Task.PRUNE_NAMESPACES,
        "schedule": _settings.namespace_prune_interval,
        "options": {"queue": contract.QUERIES, "expires": 60},
    }
# live vCenter health (workers/adapters/vcenter/inventory.py): VCM_INVENTORY_INTERVAL,
# 0 or off: never
if _settings.inventory_interval:
    beat_schedule["sync-inventory"] = {
        "task": contract.Task.SYNC_INVENTORY,
        "schedule": _settings.inventory_interval,
        "options": {"queue": contract.QUERIES, "expires": 60},
    }
beat_max_loop_interval = 1
del _settings  # not a Celery setting (and it holds credentials)
