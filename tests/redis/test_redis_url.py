"""Every client of Redis vcm builds from VCM_REDIS_URL honours the URL's query options and
talks to a real redis-server with them: the ledger (redis-py), the reports, the broker (kombu)
and result backend of `vcm`, the HTTP shim's and the controller's brokers, and Flower's broker
reader; over TLS (rediss://) too, where each verifies the server's certificate alike."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery

from tests.support.procs import RedisServer, free_port, wait_for
from tests.support.tls import CertificateAuthority
from workers.adapters.ledger import Ledger
from workers.adapters.ledger.reports import report_client

OPTIONS = "socket_timeout=3&health_check_interval=7&socket_keepalive=yes&retry_on_timeout=true"
SHOWN = ("socket_timeout", "socket_connect_timeout", "health_check_interval",
         "socket_keepalive", "retry_on_timeout")


def _kwargs(pool: Any) -> dict[str, Any]:
    return {k: pool.connection_kwargs.get(k) for k in SHOWN}


def _apps(url: str) -> dict[str, Celery]:
    from api_shim.bridge import make_celery as shim_celery
    from workers.cli.client import celery_app
    from workers.controller.placement import make_celery as controller_celery

    return {"vcm": celery_app(url), "api": shim_celery(url),
            "controller": controller_celery(url)}


def _broker(app: Celery) -> dict[str, Any]:
    """The broker connection's settings, after a message went through it."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.client.ping()
        with conn.Producer() as producer:
            producer.publish({"x": 1}, routing_key="vcm-url-test", declare=[])
        return _kwargs(channel.client.connection_pool)


def _flower_queues(app: Celery) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Flower's broker reader, built as Flower builds it from the app (flower/views)."""
    from flower.utils.broker import Broker

    with app.connection() as conn:
        uri = conn.as_uri(include_password=True)
    broker = Broker(uri, broker_options=app.conf.broker_transport_options,
                    broker_use_ssl=app.conf.broker_use_ssl)
    return _kwargs(broker.redis.connection_pool), asyncio.run(broker.queues(["vcm-url-test"]))


def test_every_client_of_redis_takes_the_url_s_options():
    server = RedisServer().start()
    url = f"{server.url}?{OPTIONS}"
    apps = _apps(url)
    try:
        given = {"socket_timeout": 3.0, "health_check_interval": 7, "socket_keepalive": True,
                 "retry_on_timeout": True}
        # the broker of each (kombu refused the query: "unexpected keyword argument"); vcm's
        # and the shim's own short connect timeouts stay, as the URL does not set one
        assert _broker(apps["vcm"]) == {**given, "socket_connect_timeout": 5.0}
        assert _broker(apps["api"]) == {**given, "socket_connect_timeout": 1.0}
        assert _broker(apps["controller"]) == {**given, "socket_connect_timeout": 2.0}
        # vcm's result backend: the URL's options over vcm's defaults (5 s to connect)
        backend = apps["vcm"].backend
        assert backend.get_task_meta("no-such-task")["status"] == "PENDING"
        assert _kwargs(backend.client.connection_pool) == {**given,
                                                           "socket_connect_timeout": 5.0}
        # redis-py from the URL: over the ledger's own timeouts and the reports' short ones
        ledger = Ledger.from_url(url)
        assert ledger.r.ping()
        assert _kwargs(ledger.r.connection_pool) == {**given, "socket_connect_timeout": 5}
        reports = report_client(url, 0.5)
        assert reports.ping()
        assert _kwargs(reports.connection_pool) == {**given, "socket_connect_timeout": 0.5}
        # Flower reads the queue's length with the timeouts (it takes no other option)
        flower, queues = _flower_queues(apps["vcm"])
        assert queues == [{"name": "vcm-url-test", "messages": 3}]
        assert flower["socket_timeout"] == 3.0
    finally:
        for app in apps.values():
            app.close()
        server.stop()


class TlsRedis:
    """A redis-server that serves TLS only, with a certificate for 127.0.0.1 issued by `ca`,
    and a password."""

    password = "tls pass/word"

    def __init__(self, ca: CertificateAuthority, directory: Path) -> None:
        issued = ca.issue()
        self.port = free_port()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.log = directory / "redis-tls.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", str(issued.cert_file), "--tls-key-file",
                 str(issued.key_file), "--tls-ca-cert-file", str(ca.path),
                 "--tls-auth-clients", "no", "--requirepass", self.password,
                 "--save", "", "--appendonly", "no", "--dir", str(directory)],
                stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, ssl=True,
                             ssl_ca_certs=str(ca.path), password=self.password,
                             socket_timeout=2)
        try:
            wait_for(lambda: self.proc.poll() is None and client.ping(), timeout=15,
                     what=f"TLS redis-server on {self.port}: {self.log.read_text()[-500:]}")
        finally:
            client.close()

    def url(self, query: str = "") -> str:
        return (f"rediss://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"
                + (f"?{query}" if query else ""))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture()
def tls_redis(tmp_path) -> Iterator[tuple[TlsRedis, CertificateAuthority]]:
    ca = CertificateAuthority(tmp_path / "ca")
    server = TlsRedis(ca, tmp_path)
    yield server, ca
    server.stop()


def _every_client(url: str) -> dict[str, Any]:
    """What each client made of the URL: True when it talked to Redis, else its error."""
    out: dict[str, Any] = {}
    apps = _apps(url)
    checks = {
        "ledger": lambda: Ledger.from_url(url).r.ping(),
        "vcm broker": lambda: bool(_broker(apps["vcm"])),
        "vcm results": lambda: apps["vcm"].backend.get_task_meta("none")["status"] == "PENDING",
        "api broker": lambda: bool(_broker(apps["api"])),
        "flower": lambda: bool(_flower_queues(apps["vcm"])),
    }
    try:
        for name, check in checks.items():
            try:
                out[name] = check()
            except Exception as exc:  # noqa: BLE001 - what each made of it is the answer
                out[name] = f"{type(exc).__name__}: {exc}"
    finally:
        for app in apps.values():
            app.close()
    return out


def test_over_tls_every_client_verifies_the_certificate_alike(tls_redis):
    """rediss://: with the CA named in the URL every client talks to Redis; without it none
    does (each verifies, as redis-py does by default; kombu alone did not); with
    ssl_cert_reqs=none every one does."""
    server, ca = tls_redis
    trusted = _every_client(server.url(f"ssl_ca_certs={quote(str(ca.path))}&socket_timeout=5"))
    assert all(v is True for v in trusted.values()), trusted
    unverified = _every_client(server.url("socket_connect_timeout=2&socket_timeout=2"))
    assert all(v is not True and "certificate verify failed" in v.lower()
               for v in unverified.values()), unverified
    assert all(v is True for v in _every_client(server.url("ssl_cert_reqs=none")).values())
