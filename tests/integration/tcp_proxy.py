"""A TCP proxy a test can cut or hang. Cut: every connection through it drops at once and new
ones are refused, until it is restored; how a test makes PostgreSQL (or Redis) unreachable
mid-request. Hang: connections stay open and new ones are accepted, but nothing is forwarded
either way, like a frozen server or a half-open network; TCP acknowledges everything, so no
timeout of the kernel's ever fires. Restored, what was held back flows on in order, as a thawed
server would read it."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from sqlalchemy.engine import make_url


class TcpProxy:
    # The URL that reaches the target through the proxy (`in_front_of`).
    url: str

    def __init__(self, target_host: str, target_port: int):
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = True
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def in_front_of(cls, url: str, **query: str) -> TcpProxy:
        """A proxy to the server of `url` (a database's or Redis's), whose `url` is the same
        but through the proxy, with `query` added to it."""
        target = make_url(url)
        default_port = 6379 if target.drivername.startswith("redis") else 5432
        proxy = cls(target.host or "127.0.0.1", target.port or default_port)
        proxied = target.set(port=proxy.port).update_query_dict(query)
        proxy.url = proxied.render_as_string(hide_password=False)
        return proxy

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return  # closed
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                # Cut (or closed) while this connection was being made: `cut` has already
                # closed what it knew of, and would never close these.
                if not self._open:
                    client.close()
                    upstream.close()
                    continue
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while chunk := source.recv(65536):
                self._flowing.wait()
                sink.sendall(chunk)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones."""
        self._open = False
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for end in doomed:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._flowing.set()

    def hang(self) -> None:
        """Forward nothing from now on, on open connections and new ones alike."""
        self._flowing.clear()

    def restore(self) -> None:
        self._open = True
        self._flowing.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()
