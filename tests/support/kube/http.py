"""The HTTP side of the test apiserver: one handler thread per connection (keep-alive), JSON
answers, watch streams, and the injected faults (slow, failing or trickled answers)."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.support.kube.core import WatchAnswer
from tests.support.kube.errors import ApiError
from tests.support.kube.faults import FAULT_REASONS, Fault

if TYPE_CHECKING:
    from tests.support.kube.server import KubeApiServer

VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    # TCP_NODELAY, as Go's net/http (the real apiserver) does: headers and body go out in two
    # writes, and with Nagle + delayed ACK every answer would stall ~40 ms on keep-alive
    disable_nagle_algorithm = True
    server_version = "kube-apiserver-test"
    api: KubeApiServer  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, headers: dict[str, str],
              fault: Fault | None = None) -> None:
        payload = body if isinstance(body, bytes) else \
            json.dumps(body, separators=(",", ":")).encode()
        if fault is not None and fault.trickle is not None:
            self._trickle(code, payload, headers, fault)
            return
        try:
            self._start_answer(code, payload, headers)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
            self.close_connection = True

    def _start_answer(self, code: int, payload: bytes, headers: dict[str, str]) -> None:
        """The status line and the headers of a JSON answer of `payload`."""
        self.send_response(code)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            if key != "Content-Type":
                self.send_header(key, value)

    def _trickle(self, code: int, payload: bytes, headers: dict[str, str], fault: Fault) -> None:
        """The answer as a slow proxy sends it: headers at once, then the body byte by byte,
        `fault.trickle` seconds apart; the last byte waits for `fault.hold` too."""
        api = self.api
        with api._lock:
            api.trickling += 1
        outcome = "cut"
        try:
            self._start_answer(code, payload, headers)
            self.end_headers()
            self.wfile.flush()
            for i in range(len(payload)):
                if api._stopping.wait(fault.trickle):
                    break
                if i == len(payload) - 1 and not self._held_until_released(fault):
                    break
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
            else:
                outcome = "sent"
        except OSError:  # the client gave up (a broken pipe, a reset)
            pass
        finally:
            if outcome != "sent":
                self.close_connection = True
            with api._lock:
                api.trickling -= 1
                api.trickled.append(outcome)

    def _held_until_released(self, fault: Fault) -> bool:
        """Wait for `fault.hold` (if any); False when the server stops first."""
        while fault.hold is not None and not fault.hold.is_set():
            if self.api._stopping.wait(fault.trickle):
                return False
        return True

    def _serve(self) -> None:
        api = self.api
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        method = self.command
        length = int(self.headers.get("Content-Length") or 0)
        if length > api.max_request_bytes:
            self.close_connection = True
            self._discard(length)
            err = ApiError(
                413,
                "RequestEntityTooLarge",
                f"request entity too large: limit is {api.max_request_bytes}",
            )
            api._record(method, path, err.code)
            self._send(err.code, err.status(), {})
            return
        raw = self.rfile.read(length) if length else b""
        if api._latency:
            time.sleep(api._latency)
        resource, name = api.target(method, path, query, raw)
        fault = api._take_fault(method, name, resource)
        trickle = fault if fault is not None and fault.trickle is not None else None
        if fault is not None:
            if fault.hang:
                if api._stopping.wait(fault.hang):
                    self.close_connection = True
                    return
            if fault.status is not None:
                reason = FAULT_REASONS[fault.status]
                verb = "list" if method == "GET" and name is None else VERBS.get(method, "")
                message = {
                    503: "the server is currently unable to handle the request",
                    429: "the server has received too many requests and has asked us to try "
                    "again later",
                    504: "the server was unable to return a response in the time allotted",
                    403: f'{resource or "the resource"} is forbidden: User '
                    f'"system:serviceaccount:test:test" cannot {verb} resource '
                    f'"{resource or ""}" in API group ""'
                    + (" at the cluster scope" if resource == "namespaces" else ""),
                }.get(fault.status, f"Internal error occurred: injected fault {fault.status}")
                err = ApiError(
                    fault.status,
                    reason,
                    message,
                    {"retryAfterSeconds": 1} if fault.status == 429 else None,
                    {"Retry-After": "1"} if fault.status == 429 else None,
                )
                api._record(method, path, err.code)
                self._send(err.code, err.status(), err.headers)
                return
        with api._lock:
            hooks = list(api._hooks)
        for hook in hooks:
            hook(method, path, name)
        try:
            answer = api.handle(method, path, query, self.headers, raw)
        except ApiError as err:
            answer = err.code, err.status(), err.headers
        except Exception as exc:  # a bug in the test server must still answer like an apiserver
            err = ApiError(500, "InternalError", f"Internal error occurred: {exc!r}")
            answer = err.code, err.status(), {}
        if isinstance(answer, WatchAnswer):
            api._record(method, path, 200)
            self._stream(answer)
            return
        code, body, headers = answer
        api._record(method, path, code, dry_run=bool(query.get("dryRun")))
        self._send(code, body, headers, trickle)

    def _discard(self, length: int, most: int = 64 * 1024 * 1024) -> None:
        """Read and drop a refused body (up to `most` bytes), so that a client that writes
        all of it before reading gets the answer rather than a broken pipe."""
        left = min(length, most)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _stream(self, answer: WatchAnswer) -> None:
        """A watch: 200 at once, then each event as one line of JSON in its own chunk
        (Transfer-Encoding: chunked, as Go's net/http streams it), until the watch ends."""
        events = self.api.watch_events(answer)
        try:
            self.send_response(200)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for batch in events:
                data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n"
                                for e in batch)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True
        finally:
            events.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


