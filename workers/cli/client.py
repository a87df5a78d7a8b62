"""Talking to the workers: a send-only Celery app, then polling the result with progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..contract import PLACEMENT, QUEUE, WAITING, Task
from ..core.errors import ERRORS, RedisFull, VcmError
from .exits import EXIT_INPUT, CliError

if TYPE_CHECKING:
    from celery import Celery

_clients: dict[str, Any] = {}


def celery_app(redis_url: str | None) -> Celery:
    """A client-only Celery app (send and read results): the workers' settings, none of
    their code. `redis_url` (--redis-url) is checked as VCM_REDIS_URL is: a URL no client of
    Redis could use is bad input (exit 2)."""
    from celery import Celery

    from ..redis_url import celery_settings, check
    from ..settings import Settings

    if redis_url:
        try:
            check(redis_url, "--redis-url")
        except ValueError as exc:
            raise CliError(str(exc), EXIT_INPUT) from None
    url = redis_url or Settings.from_env().redis_url
    if url not in _clients:
        app = Celery("vcm-cli", set_as_current=False)
        app.config_from_object("celeryconfig")
        app.conf.update(celery_settings(url, app.conf.broker_transport_options))
        app.conf.vcm_redis_url = url  # as given, for messages (Celery's has no query)
        _clients[url] = app
    return _clients[url]


def _resendable(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether a copy of this task is the same request wherever it lands in the queue. A
    release by owner or selector is not: a late copy would release leases granted since."""
    return name != Task.RELEASE or bool(kwargs.get("lease_ids"))


def _resend_after() -> float:
    from ..settings import Settings

    return Settings.from_env().resend_after


def call(args: argparse.Namespace, name: str, timeout: float = 60.0, **kwargs: Any) -> Any:
    """Send a task and poll its result; show progress while it waits in line."""
    # here, not at the top: the commands that only edit the pools file never load Redis's
    # client (a process each time an operator runs one)
    from ..adapters.redis_memory import refused_for_memory

    app = celery_app(args.redis_url)
    queue = QUEUE.get(name, PLACEMENT)
    try:
        result = app.send_task(name, kwargs=kwargs, queue=queue, retry=True, retry_policy={
            "max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1})
    except Exception as exc:  # kombu raises several kinds when Redis is unreachable
        if refused_for_memory(exc):
            raise _full(app, f"{name} was not sent and nothing changed") from None
        from ..settings import shown_url

        raise CliError(f"cannot reach Redis at {shown_url(app.conf.vcm_redis_url)}: {exc}") \
            from None
    deadline = time.monotonic() + timeout
    hinted, last_line = False, ""
    full: RedisFull | None = None  # Redis refused to take the task again: it is full
    started = last_sent = time.monotonic()
    resend_after = _resend_after()
    try:
        while not result.ready():
            now = time.monotonic()
            if now > deadline:
                if full is not None:
                    raise full
                raise CliError(f"no answer within {timeout:g}s (task {result.id}); "
                               f"is a {queue} worker running?")
            # the task's record, read once: its state and what it says are of one moment (read
            # apart, a grant stored in between pairs WAITING with the leases)
            record = result.backend.get_task_meta(result.id)
            state, info = record.get("status"), record.get("result")
            # Redis's transport pops a message, then records it as unacked: a worker killed in
            # between loses it. A waiter's answer, stored when it is granted or its wait runs
            # out, is lost with a worker stopped before it could store it (Redis full, say);
            # its task was acked when it joined the line. The same task id again is the same
            # request, answered once (a copy that finds it done answers the same).
            lost = state == "PENDING" or (state == WAITING
                                          and _wait_ran_out(info, resend_after))
            if lost and now - last_sent > resend_after and _resendable(name, kwargs):
                last_sent = now
                try:
                    app.send_task(name, kwargs=kwargs, queue=queue, task_id=result.id)
                except Exception as exc:
                    if not refused_for_memory(exc):
                        raise
                    # the task is still queued, or held by a worker until Redis has room:
                    # its answer may come yet; wait for it until the deadline
                    if full is None and not args.quiet:
                        print(f"Redis is full: could not send task {result.id} again; "
                              "waiting for its answer", file=sys.stderr)
                    full = _full(app, f"{name} (task {result.id}) got no answer within "
                                 f"{timeout:g}s", then="its answer comes once Redis has room "
                                 "(vcm sends the same task id again: it is answered once)")
                else:
                    if not args.quiet:
                        why = (f"no worker took task {result.id} in {now - started:.0f}s"
                               if state == "PENDING" else
                               f"task {result.id} still shows waiting after its wait ran out")
                        print(f"{why}: sent it again (same task id, so the same request)",
                              file=sys.stderr)
            if state == WAITING and isinstance(info, dict):
                line = f"waiting in line: position {info.get('position')}"
                if info.get("reasons"):
                    line += " (" + "; ".join(f"{k}: {v}" for k, v in
                                             sorted(info["reasons"].items())) + ")"
                if line != last_line and not args.quiet:
                    print(line, file=sys.stderr)
                    last_line = line
            elif state == "PENDING" and now - started > 5 and not hinted and not args.quiet:
                print(f"still queued after 5s: is a {queue} worker running? "
                      f"(celery -A tasks worker -Q {queue})", file=sys.stderr)
                hinted = True
            time.sleep(0.05 if now - started < 2 else 0.25)
        return result.get(timeout=5, propagate=True)
    except VcmError:
        raise
    except CliError:
        raise
    except Exception as exc:
        name_ = type(exc).__name__
        if name_ in ERRORS:  # rebuilt by Celery without our module: map by name
            raise ERRORS[name_](*exc.args) from None
        if refused_for_memory(exc):
            raise _full(app, f"{name} (task {result.id}) could not be completed") from None
        raise CliError(f"{name_}: {exc}") from None


def _wait_ran_out(info: Any, grace: float) -> bool:
    """Whether a waiting task's deadline passed more than `grace` seconds ago: by then its
    worker answers it (leases or WaitTimeout) unless that answer was lost."""
    from ..core.lease import parse_rfc3339

    deadline = info.get("deadline") if isinstance(info, dict) else None
    try:
        return isinstance(deadline, str) and parse_rfc3339(deadline) + grace < time.time()
    except ValueError:
        return False


def _full(app: Celery, refused: str,
          then: str = "send it again once Redis has room") -> RedisFull:
    """RedisFull, with Redis's memory numbers when it tells them."""
    from ..adapters.redis_memory import full_error

    try:
        client = app.backend.client
    except Exception:  # noqa: BLE001 - only the message's numbers are at stake
        client = None
    return full_error(client, refused, then)
