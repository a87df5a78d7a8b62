"""A TCP proxy in front of a redis-server that loses one reply: what a client sees when its
connection breaks (or its read times out) after Redis ran the command.

Everything is passed on both ways until the proxy is armed with a pattern (a script's SHA, a
command's name as Redis receives it). The next command whose bytes hold it is passed on to
Redis; then, as soon as Redis's reply arrives (so the command ran), the proxy either closes the
client's connection without passing the reply on (`drop`: the client reads a closed
connection) or keeps the connection open and the reply to itself (`hold`: the client's read
times out). Once: later commands, and the client's new connection, go through.

`sent[pattern]` counts the commands holding each armed pattern that reached Redis: 2 after one
loss means the client sent the command again on its own.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections import Counter


class LostReplyProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._armed: tuple[bytes, str] | None = None
        self._watched: set[bytes] = set()
        self.sent: Counter[bytes] = Counter()
        self.lost = 0  # replies lost so far
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="lost-reply-proxy").start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, pattern: bytes | str, mode: str = "drop") -> None:
        """Lose the reply to the next command holding `pattern` (`drop` or `hold`)."""
        if mode not in ("drop", "hold"):
            raise ValueError(f"mode {mode!r}: drop or hold")
        pattern = pattern.encode() if isinstance(pattern, str) else pattern
        with self._lock:
            self._armed = (pattern, mode)
            self._watched.add(pattern)
            self.sent[pattern] = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="lost-reply-conn").start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._sockets |= {client, upstream}
        try:
            self._relay(client, upstream)
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets -= {client, upstream}

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        tail = b""  # the end of what the client sent, for a pattern split between reads
        doomed: tuple[bytes, str] | None = None  # the next reply on this connection is lost
        held = False  # a reply was held: the client gave up on this connection
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client:
                        seen = tail + data
                        with self._lock:
                            for pattern in self._watched:
                                self.sent[pattern] += seen.count(pattern) - tail.count(pattern)
                            armed = self._armed
                            if armed and seen.count(armed[0]) > tail.count(armed[0]):
                                doomed, self._armed = armed, None
                        tail = seen[-256:]
                    elif held:
                        continue
                    elif doomed is not None and data.startswith(b"-NOSCRIPT"):
                        # it did not run (Redis did not know the script yet): the client
                        # loads the script and sends the command again; that reply is lost
                        with self._lock:
                            self._armed, doomed = doomed, None
                    elif doomed is not None:  # Redis ran it: its reply goes nowhere
                        with self._lock:
                            self.lost += 1
                        if doomed[1] == "drop":
                            return
                        held = True
                        continue
                    try:
                        peer[source].sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LostReplyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
