"""A local TCP port that relays to a pod's port through the Kubernetes API, like
`kubectl port-forward`: psycopg connects to 127.0.0.1:<port> and talks to the database pod.

The relay takes a function that opens one socket to the pod per connection, so a test can
hand it a socket to a real local PostgreSQL instead of a cluster's.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

OpenSocket = Callable[[], Any]   # -> an object with recv/sendall/close (a socket, or the client's PortForward socket)


def _pump(source: Any, dest: Any) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            dest.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, dest):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass


class PortForward:
    def __init__(self, open_socket: OpenSocket) -> None:
        self.open_socket = open_socket
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                remote = self.open_socket()
            except Exception:  # noqa: BLE001 - the client then sees a closed connection, named by psycopg
                client.close()
                continue
            threading.Thread(target=_pump, args=(client, remote), daemon=True).start()
            threading.Thread(target=_pump, args=(remote, client), daemon=True).start()

    def __enter__(self) -> "PortForward":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closed = True
        self._listener.close()


def pod_socket(core: Any, namespace: str, pod: str, port: int) -> OpenSocket:
    """A socket opener for a pod's port through the API server (kubernetes.stream.portforward)."""
    def open_one() -> Any:
        from kubernetes.stream import portforward

        forward = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port)
    return open_one
