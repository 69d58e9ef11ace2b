"""A TCP relay that can turn every connection open now into a black hole: bytes sent on it are
swallowed and nothing comes back, yet neither end sees it close. That is what a client sees when
the machine at the other end vanishes (power cut, network partition, a half-open socket after a
failover); only a socket timeout or keepalive tells it. Connections made later relay normally,
as to the reachable master after a failover."""

from __future__ import annotations

import socket
import threading


class BlackholeProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[dict] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            pair = {"sockets": (client, upstream), "dead": False}
            with self._lock:
                self._open.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(pair, src, dst), daemon=True).start()

    def _relay(self, pair: dict, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not pair["dead"]:  # a real close passes on; a black hole never closes
                    for sock in pair["sockets"]:
                        _close(sock)
                return
            if not pair["dead"]:
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def blackhole_open_connections(self) -> int:
        """Swallow everything on the connections open now; returns how many there were."""
        with self._lock:
            for pair in self._open:
                pair["dead"] = True
            count, self._open = len(self._open), []
        return count

    def close(self) -> None:
        self._closed = True
        _close(self.listener)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
