"""VCM_REDIS_URL: what vcm takes in it, and how each client of Redis is given its options.

Three libraries connect with the URL, and each reads a query (`?socket_timeout=3`) its own way:

- redis-py (`Redis.from_url`: the ledger, the HTTP shim's and the controller's clients, the
  reports) types the options it knows and hands any other to its connection class, which
  refuses a name it does not know at the first command. The URL's options win over the
  arguments the code passes. A repeated option: the first counts. `retry_on_timeout` adds
  timeouts to what a client's retry policy retries: the ledger's and the reports' allow no
  retry (ledger/__init__.py says why).
- kombu (Celery's broker, and Flower's) makes each query item an argument of
  `kombu.Connection`, which takes only its own (`connect_timeout`, `heartbeat`, `ssl_*`…):
  `socket_timeout` there is "unexpected keyword argument 'socket_timeout'". The Redis
  transport takes its socket options from `broker_transport_options`, TLS from
  `broker_use_ssl`. A repeated option: the last counts.
- Celery's Redis result backend lays the query over its own settings (`redis_socket_timeout`…),
  typed by redis-py's parsers, and unquotes the `ssl_*` paths a second time.

So vcm takes only the options all three can honour (OPTIONS), each once, with a value of its
type and range, and `check` refuses anything else naming the variable and the option. redis-py
reads them from the URL; Celery is given the URL without its query and the options as its own
settings (`celery_settings`). Over each client's own defaults, the URL's options win, as in
redis-py. No message repeats the URL or an option's value that could hold a secret: the URL
may hold the password.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .core.text import shown, text_problem

MAX_URL = 64 * 1024
# vcm's own settings of the result backend's connections (celeryconfig), under the URL's options
RESULT_BACKEND_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 5.0, "socket_timeout": 30.0, "health_check_interval": 30,
    "socket_keepalive": False, "retry_on_timeout": False}
# a refused option's name is shown when it looks like one; anything else in that place (a
# password written where no name goes, say) is not repeated
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}", re.ASCII)

_DECIMAL = re.compile(r"[0-9]{1,7}(\.[0-9]{1,6})?", re.ASCII)
_WHOLE = re.compile(r"[0-9]{1,7}", re.ASCII)
_SWITCH = {"true": True, "yes": True, "on": True, "1": True,
           "false": False, "no": False, "off": False, "0": False}
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
              "none": ssl.CERT_NONE}


def _seconds(minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if not _DECIMAL.fullmatch(text):
            raise ValueError(f"{shown(text)} is not seconds (a number like 3 or 2.5)")
        value = float(text)
        if not minimum <= value <= maximum:
            raise ValueError(f"{value:g}s is not within {minimum:g}s..{maximum:g}s")
        return value

    return parse


def _whole_seconds(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _WHOLE.fullmatch(text):
            raise ValueError(f"{shown(text)} is not a whole number of seconds")
        value = int(text)
        if value > maximum:
            raise ValueError(f"{value}s is more than {maximum}s")
        return value

    return parse


def _switch(text: str) -> bool:
    try:
        return _SWITCH[text.lower()]
    except KeyError:
        raise ValueError(f"{shown(text)} is not true or false") from None


def _cert_reqs(text: str) -> str:
    if text not in _CERT_REQS:  # redis-py takes these three, in lower case, and no other
        raise ValueError(f"{shown(text)}: use required, optional or none")
    return text


def _file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError(f"no file at {shown(text, 200)}")
    return text


@dataclass(frozen=True)
class Option:
    parse: Callable[[str], Any]
    tls: bool = False  # rediss:// only


OPTIONS: dict[str, Option] = {
    # at least 1 s: the workers' blocking reads wait up to 1 s at Redis (the broker's BRPOP,
    # the mirror publisher's BLPOP), and a shorter socket timeout would cut them off
    "socket_timeout": Option(_seconds(1, 3600)),
    "socket_connect_timeout": Option(_seconds(0.1, 3600)),
    # 0: no checks (redis-py's default)
    "health_check_interval": Option(_whole_seconds(3600)),
    "socket_keepalive": Option(_switch),
    "retry_on_timeout": Option(_switch),
    "ssl_cert_reqs": Option(_cert_reqs, tls=True),
    "ssl_ca_certs": Option(_file, tls=True),
    "ssl_certfile": Option(_file, tls=True),
    "ssl_keyfile": Option(_file, tls=True),
}
# what a refusal suggests instead, for options Redis URLs elsewhere commonly carry
_INSTEAD = {
    "password": "the password goes before the host: redis://:PASSWORD@host:6379/0",
    "username": "the user goes before the host: redis://USER:PASSWORD@host:6379/0",
    "db": "the database goes in the path: redis://host:6379/0",
    "virtual_host": "the database goes in the path: redis://host:6379/0",
}


@dataclass(frozen=True)
class RedisUrl:
    """A checked VCM_REDIS_URL: `plain` is it without its query (what Celery is given),
    `options` the query's options, typed."""

    plain: str = field(repr=False)  # may hold the password
    tls: bool
    options: dict[str, Any]

    def ssl_options(self) -> dict[str, Any] | None:
        """For rediss://: kombu's `broker_use_ssl` and Celery's `redis_backend_use_ssl`, with
        the certificate verified unless the URL says otherwise (redis-py's default; kombu's
        own, without it, is not to verify)."""
        if not self.tls:
            return None
        out: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[self.options.get("ssl_cert_reqs",
                                                                               "required")]}
        out.update((k, v) for k, v in self.options.items()
                   if OPTIONS[k].tls and k != "ssl_cert_reqs")
        return out

    def socket_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if not OPTIONS[k].tls}


def check(raw: str, name: str) -> RedisUrl:
    """`raw` checked as a Redis URL every client of vcm takes; ValueError naming `name` (the
    variable or flag) and, for a query option, the option."""
    problem = text_problem(raw, MAX_URL)
    if problem:
        raise ValueError(f"{name}: {problem}")
    url = urlsplit(raw)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"{name}: must start with redis:// or rediss:// (the broker, the "
                         "result backend and the ledger share it)")
    try:
        url.port  # noqa: B018 - urlsplit checks the port when it is read
    except ValueError:
        raise ValueError(f"{name}: the port must be a number within 0..65535") from None
    database = url.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"{name}: the database after the host must be a number (/0)")
    tls = url.scheme == "rediss"
    options: dict[str, Any] = {}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        option = OPTIONS.get(key)
        if option is None:
            label = repr(key) if _NAME.fullmatch(key) else "(not an option name)"
            hint = _INSTEAD.get(key.lower(), "vcm takes " + ", ".join(
                k for k, o in OPTIONS.items() if not o.tls) + "; with rediss:// also "
                + ", ".join(k for k, o in OPTIONS.items() if o.tls))
            raise ValueError(f"{name}: query option {label} is not one vcm takes ({hint})")
        if option.tls and not tls:
            raise ValueError(f"{name}: query option {key!r} is for rediss:// URLs")
        if key in options:  # redis-py would take the first, Celery's broker the last
            raise ValueError(f"{name}: query option {key!r} is given more than once")
        if not value:
            raise ValueError(f"{name}: query option {key!r} has no value")
        try:
            options[key] = option.parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}: query option {key}: {exc}") from None
    plain = urlunsplit((url.scheme, url.netloc, url.path, "", ""))
    return RedisUrl(plain, tls, options)


def celery_settings(raw: str, transport: Mapping[str, Any], *, results: bool = True,
                    broker_defaults: Mapping[str, Any] | None = None,
                    backend_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Celery's settings for the Redis URL `raw` (checked): the broker (and, with `results`,
    the result backend) at the URL without its query, and the query's options as the broker's
    transport options, over `transport` and `broker_defaults`, and as the result backend's
    settings, over `backend_defaults` and RESULT_BACKEND_DEFAULTS. An option `transport`
    holds from another URL is not kept."""
    url = check(raw, "the Redis URL")
    sockets = url.socket_options()
    broker = {k: v for k, v in transport.items() if k not in OPTIONS}
    broker.update(broker_defaults or {})
    broker.update(sockets)
    out: dict[str, Any] = {"broker_url": url.plain, "broker_transport_options": broker,
                           "broker_use_ssl": url.ssl_options() or False}
    if results:
        backend = {**RESULT_BACKEND_DEFAULTS, **(backend_defaults or {}), **sockets}
        out.update(
            result_backend=url.plain,
            redis_backend_use_ssl=url.ssl_options(),
            redis_socket_connect_timeout=backend["socket_connect_timeout"],
            redis_socket_timeout=backend["socket_timeout"],
            redis_backend_health_check_interval=backend["health_check_interval"],
            redis_socket_keepalive=backend["socket_keepalive"],
            redis_retry_on_timeout=backend["retry_on_timeout"],
        )
    return out
