"""Settings of the HTTP shim: the common ones (workers.settings) plus its own `VCM_API_*`
(`ApiEnv`, read the same way), and the API tokens."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

from workers.settings import EnvSettings, Settings, duration

MAX_BODY = 64 * 1024  # bytes; larger bodies get 413
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    admin: bool = False


def parse_tokens(text: str, where: str = "VCM_API_TOKENS") -> tuple[Token, ...]:
    """`name:token[:admin]` entries, separated by commas or newlines; `#` starts a comment."""
    tokens: list[Token] = []
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    entries = [e.strip() for line in lines for e in line.split(",")]
    for number, entry in enumerate((e for e in entries if e), 1):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
            # never echo the entry: it may be a bare token
            raise SystemExit(f"invalid setting {where}: entry {number} is not name:token "
                             "or name:token:admin")
        if len(parts) == 3 and parts[2].strip() != "admin":
            raise SystemExit(f"invalid setting {where}: entry {parts[0].strip()!r}: the third part "
                             f"may only be 'admin', not {parts[2].strip()!r}")
        name, secret = parts[0].strip(), parts[1].strip()
        if any(t.name == name for t in tokens):
            raise SystemExit(f"invalid setting {where}: name {name!r} appears twice")
        if any(t.secret == secret for t in tokens):
            raise SystemExit(f"invalid setting {where}: entry {name!r} reuses another's token")
        tokens.append(Token(name, secret, len(parts) == 3))
    return tuple(tokens)


def read_token_file(path: str, others: tuple[Token, ...] = ()) -> tuple[Token, ...]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"invalid setting VCM_API_TOKENS_FILE={path!r}: "
                         f"{exc.strerror}") from None
    tokens = parse_tokens(text, f"VCM_API_TOKENS_FILE ({path})")
    names = {t.name for t in tokens} & {t.name for t in others}
    if names:
        raise SystemExit(f"invalid setting: token name {sorted(names)[0]!r} is in both "
                         "VCM_API_TOKENS and VCM_API_TOKENS_FILE")
    return tokens


class TokenStore:
    """The tokens in force: VCM_API_TOKENS, plus VCM_API_TOKENS_FILE re-read when the file
    changes (a mounted Kubernetes Secret is updated in place: rotation without a restart).
    A file that becomes unreadable or invalid keeps the last good tokens, with a warning."""

    CHECK_EVERY = 2.0

    def __init__(self, static: tuple[Token, ...], path: str = "") -> None:
        self.static = static
        self.path = path
        self.tokens = static
        self.stamp: tuple[int, int, int] | None = None
        self.checked = -self.CHECK_EVERY
        if path:
            self.current()

    def current(self) -> tuple[Token, ...]:
        if not self.path or time.monotonic() - self.checked < self.CHECK_EVERY:
            return self.tokens
        self.checked = time.monotonic()
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self.stamp:
                self.tokens = self.static + read_token_file(self.path, self.static)
                self.stamp = stamp
                log.info("API tokens loaded from %s: %s", self.path,
                         ", ".join(t.name for t in self.tokens) or "none")
        except (OSError, SystemExit) as exc:
            log.warning("keeping the previous API tokens: %s", exc)
        return self.tokens


MONTH = 30 * 86400.0
# where upstream's Lease, Pool and Network objects live in OpenShift CI: the `namespace` its
# metrics carry, and so what its queries and dashboards may filter on
METRICS_NAMESPACE = "vsphere-infra-helpers"


def _api_duration(minimum: float = 0.0) -> BeforeValidator:
    return duration(maximum=MONTH, minimum=minimum, short="at least")


class ApiEnv(EnvSettings):
    """The shim's own variables, `VCM_API_*` (the common ones are workers.settings.Settings)."""

    # the longest `wait` a synchronous POST /acquire will hold the HTTP request open for
    api_max_sync_wait: Annotated[float, _api_duration()] = Field(default="3600")
    # how long to wait for a task's answer beyond the request's own wait
    api_timeout: Annotated[float, _api_duration(minimum=1)] = Field(default="30")
    api_worker_fresh: Annotated[float, _api_duration()] = Field(default="2")
    api_parked_grace: Annotated[float, _api_duration()] = Field(default="60")
    api_body_timeout: Annotated[float, _api_duration(minimum=0.1)] = Field(default="30")
    # re-read when it changes (Secret rotation)
    api_tokens_file: str = ""
    # /readyz says degraded (redis-memory state high) from this fraction of Redis's maxmemory
    api_redis_memory_warn: float = Field(default=0.8, gt=0, le=1)
    # the `namespace` label of the metrics named as upstream's (a Kubernetes namespace name)
    api_metrics_namespace: str = Field(default=METRICS_NAMESPACE,
                                       pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$")


@dataclass(frozen=True)
class ApiSettings:
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # has the password
    tokens: tuple[Token, ...] = ()
    # the longest `wait` a synchronous POST /acquire will hold the HTTP request open for;
    # longer waits must use ?async=true and poll GET /tasks/{id}
    max_sync_wait: float = 3600.0
    # how long to wait for a task's answer beyond the request's own wait (queue backlog)
    task_timeout: float = 30.0
    # a worker that answered a ping this recently counts as alive without asking again
    worker_fresh: float = 2.0
    # how long a worker may be silent while it holds a parked (WAITING) request of ours
    parked_grace: float = 60.0
    ping_timeout: float = 0.5
    discover_timeout: float = 0.6
    max_body: int = MAX_BODY
    body_timeout: float = 30.0  # a request body must arrive within this (else 408)
    memory_warn: float = 0.8  # /readyz: Redis memory state `high` from this used/maxmemory
    metrics_namespace: str = METRICS_NAMESPACE  # the label of the metrics named as upstream's
    base: Settings | None = field(default=None, compare=False, repr=False)

    tokens_file: str = ""  # VCM_API_TOKENS_FILE: re-read when it changes (Secret rotation)

    @property
    def auth(self) -> bool:
        return bool(self.tokens or self.tokens_file)

    @classmethod
    def from_env(cls, base: Settings | None = None) -> ApiSettings:
        base = base or Settings.from_env()
        return cls.from_settings(base)

    @classmethod
    def from_settings(cls, base: Settings, env: ApiEnv | None = None) -> ApiSettings:
        tokens = parse_tokens(base.api_tokens) if base.api_tokens else ()
        env = env or ApiEnv.from_env()
        path = env.api_tokens_file
        if path:
            read_token_file(path, tokens)  # a bad file stops start-up, like a bad variable
        return cls(
            redis_url=base.redis_url,
            tokens=tokens,
            tokens_file=path,
            max_sync_wait=env.api_max_sync_wait,
            task_timeout=env.api_timeout,
            worker_fresh=env.api_worker_fresh,
            parked_grace=env.api_parked_grace,
            body_timeout=env.api_body_timeout,
            memory_warn=env.api_redis_memory_warn,
            metrics_namespace=env.api_metrics_namespace,
            base=base,
        )
