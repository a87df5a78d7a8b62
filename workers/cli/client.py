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
# the CLI's sockets to Redis, unless the URL's query sets them: a Redis that takes connections
# but never answers (a hung node, a network that drops its replies) holds a send or a poll this
# long, not forever (kombu's broker has no timeout of its own) nor 30 s (the workers' result
# backend): how far past its deadline a wait can end
SOCKETS: dict[str, float] = {"socket_connect_timeout": 5.0, "socket_timeout": 5.0}


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
        app.conf.update(celery_settings(url, app.conf.broker_transport_options,
                                        broker_defaults=SOCKETS, backend_defaults=SOCKETS))
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
    """Send a task and poll its result; show progress while it waits in line.

    Redis not answering while it polls (a restart, a failover) does not end the wait: it is
    said once, the polls back off until Redis answers again, then the wait goes on. Only at
    the deadline does it fail, naming Redis. A first send Redis does not take fails at once
    (nothing was queued: the command can be run again)."""
    # here, not at the top: the commands that only edit the pools file never load Redis's
    # client (a process each time an operator runs one)
    from celery import states

    from ..adapters.redis_memory import refused_for_memory
    from ..settings import shown_url

    app = celery_app(args.redis_url)
    where = shown_url(app.conf.vcm_redis_url)  # as given (Celery's URL has no query)
    queue = QUEUE.get(name, PLACEMENT)
    try:
        result = app.send_task(name, kwargs=kwargs, queue=queue, retry=True, retry_policy={
            "max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1})
    except Exception as exc:  # kombu raises several kinds when Redis is unreachable
        if refused_for_memory(exc):
            raise _full(app, f"{name} was not sent and nothing changed") from None
        raise CliError(f"cannot reach Redis at {where}: {exc}") from None
    deadline = time.monotonic() + timeout
    outage = _Outage(where, result.id, time.time() + timeout, args.quiet)
    hinted, last_line = False, ""
    full: RedisFull | None = None  # Redis refused to take the task again: it is full
    started = last_sent = time.monotonic()
    resend_after = _resend_after()
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                if outage.since is not None:
                    raise outage.gave_up(name, timeout)
                if full is not None:
                    raise full
                raise CliError(f"no answer within {timeout:g}s (task {result.id}); "
                               f"is a {queue} worker running?")
            # the task's record, read once: its state and what it says are of one moment (read
            # apart, a grant stored in between pairs WAITING with the leases)
            try:
                record = result.backend.get_task_meta(result.id)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                time.sleep(min(outage.down(exc, now), max(0.0, deadline - time.monotonic())))
                continue
            state, info = record.get("status"), record.get("result")
            if state in states.READY_STATES:
                break
            # Redis's transport pops a message, then records it as unacked: a worker killed in
            # between loses it. A waiter's answer, stored when it is granted or its wait runs
            # out, is lost with a worker stopped before it could store it (Redis full, say);
            # its task was acked when it joined the line. The same task id again is the same
            # request, answered once (a copy that finds it done answers the same).
            lost = state == "PENDING" or (state == WAITING
                                          and _wait_ran_out(info, resend_after))
            resent = ""
            if lost and now - last_sent > resend_after and _resendable(name, kwargs):
                sent_before, last_sent = last_sent, now
                try:  # not retried in place: this loop sends it again, within the deadline
                    app.send_task(name, kwargs=kwargs, queue=queue, task_id=result.id,
                                  retry=False)
                except Exception as exc:
                    if _unreachable(exc):
                        # Redis went between the read and the send: sent again at the first
                        # turn it answers
                        last_sent = sent_before
                        time.sleep(min(outage.down(exc, now),
                                       max(0.0, deadline - time.monotonic())))
                        continue
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
                    why = (f"no worker took task {result.id} in {now - started:.0f}s"
                           if state == "PENDING" else
                           f"task {result.id} still shows waiting after its wait ran out")
                    resent = f"{why}: sent it again (same task id, so the same request)"
            outage.up()  # a whole turn went through: said before what the turn did
            if resent and not args.quiet:
                print(resent, file=sys.stderr)
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
        # the answer is in the record just read (a failure decoded to its exception, as
        # result.get would raise it): no other read that Redis could fail
        if state == states.SUCCESS:
            return info
        if isinstance(info, BaseException):
            raise info
        raise CliError(f"{name} (task {result.id}) ended {state}: {info}")
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


def _unreachable(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, is Redis not answering now: no
    connection (refused, reset, timed out), a restarted Redis still loading its data (redis-py's
    BusyLoadingError is one of its ConnectionErrors), a write sent to a replica during a
    failover (ReadOnlyError). kombu re-raises these as its OperationalError, Celery's result
    consumer as a RuntimeError, both raised from them; kombu's OperationalError also wraps
    Redis's other refusals, which are not (nor is a refusal for memory: RedisFull). A refused
    password is not either: waiting does not change it."""
    import redis
    from kombu.exceptions import OperationalError

    from ..adapters.redis_memory import refused_for_memory

    if refused_for_memory(exc):
        return False
    chain: list[BaseException] = []
    while exc is not None and all(exc is not e for e in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, (redis.AuthenticationError, VcmError)) for e in chain):
        return False
    if any(isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
                          ConnectionError, TimeoutError)) for e in chain):
        return True
    return bool(chain) and isinstance(chain[-1], OperationalError)  # raised from nothing known


class _Outage:
    """Redis not answering while `call` polls: said once when it starts and once when it ends,
    and the polls between it back off (0.2 s doubling to 10 s)."""

    def __init__(self, where: str, task_id: str, until: float, quiet: bool) -> None:
        from ..core.lease import rfc3339

        self.where, self.task_id, self.quiet = where, task_id, quiet
        self.until = rfc3339(until)
        self.since: float | None = None  # when this outage began (monotonic), None: no outage
        self.error: BaseException | None = None  # its last error
        self._backoff: Any = None

    def down(self, exc: BaseException, began: float) -> float:
        """A poll or send Redis did not answer (sent at `began`, monotonic: it may have waited
        for its socket timeout): the pause before the next."""
        if self.since is None:
            from ..backoff import Backoff  # tenacity: loaded only when Redis goes

            self.since = began
            self._backoff = self._backoff or Backoff()
            if not self.quiet:
                print(f"Redis at {self.where} is not answering ({_first_line(exc)}): still "
                      f"waiting for task {self.task_id} (until {self.until})", file=sys.stderr)
        self.error = exc
        return float(self._backoff.next())

    def up(self) -> None:
        """Redis answered a whole turn."""
        if self.since is None:
            return
        if not self.quiet:
            print(f"Redis at {self.where} answers again after "
                  f"{time.monotonic() - self.since:.0f}s: still waiting for task "
                  f"{self.task_id}", file=sys.stderr)
        self.since, self.error = None, None
        self._backoff.reset()

    def gave_up(self, name: str, timeout: float) -> CliError:
        """The deadline passed while Redis did not answer."""
        assert self.since is not None
        return CliError(f"no answer within {timeout:g}s ({name}, task {self.task_id}): Redis at "
                        f"{self.where} did not answer for the last "
                        f"{time.monotonic() - self.since:.0f}s ({_first_line(self.error)})")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


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
