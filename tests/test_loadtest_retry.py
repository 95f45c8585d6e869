"""The load test's retry against a real socket server that drops kept-alive connections."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests
from requests.adapters import HTTPAdapter

from kit.loadtest.retry import browser_retry

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


def _read_request(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return True


@pytest.fixture()
def server() -> Iterator[Callable[[Callable[[int, int, socket.socket], bool]], tuple[str, dict[str, int]]]]:
    """A server whose `behave(connection_no, request_no, conn)` answers or drops; returns False to close."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(behave: Callable[[int, int, socket.socket], bool]) -> tuple[str, dict[str, int]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        sockets.append(listener)
        seen = {"connections": 0, "requests": 0}

        def serve() -> None:
            for connection_no in range(3):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                seen["connections"] += 1
                with conn:
                    conn.settimeout(2)
                    while _read_request(conn):
                        seen["requests"] += 1
                        if not behave(connection_no, seen["requests"], conn):
                            break

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listener.getsockname()[1]}", seen

    yield start
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        s.close()
    for t in threads:
        t.join(timeout=5)


def session(retry: object) -> requests.Session:
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    return s


def drop_second_request(connection_no: int, request_no: int, conn: socket.socket) -> bool:
    """Answer the first request; close the kept-alive connection when the second arrives."""
    if connection_no == 0 and request_no == 2:
        return False
    conn.sendall(OK)
    return True


def test_a_post_on_a_connection_closed_before_any_reply_is_sent_again(server):
    url, seen = server(drop_second_request)
    client = session(browser_retry())
    assert client.post(url, data={"a": "1"}, timeout=5).text == "ok"
    assert client.post(url, data={"a": "2"}, timeout=5).text == "ok"
    client.close()
    assert seen == {"connections": 2, "requests": 3}


def test_without_it_the_same_post_fails(server):
    """The control: GET-only retries (what the load test had) lose that POST."""
    from urllib3.util.retry import Retry

    url, _ = server(drop_second_request)
    client = session(Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=frozenset({"GET"})))
    client.post(url, data={"a": "1"}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        client.post(url, data={"a": "2"}, timeout=5)


def test_a_post_whose_reply_had_begun_is_not_sent_again(server):
    def half_answer(connection_no: int, request_no: int, conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    url, seen = server(half_answer)
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        session(browser_retry()).post(url, data={"a": "1"}, timeout=5)
    assert seen["requests"] == 1


def test_a_post_that_timed_out_is_not_sent_again(server):
    def never_answer(connection_no: int, request_no: int, conn: socket.socket) -> bool:
        try:
            conn.recv(1)  # wait for the client to give up
        except OSError:
            pass
        return False

    url, seen = server(never_answer)
    with pytest.raises(requests.ReadTimeout):
        session(browser_retry()).post(url, data={"a": "1"}, timeout=(2, 0.5))
    assert seen["requests"] == 1


def test_a_get_that_timed_out_is_not_sent_again(server):
    def never_answer(connection_no: int, request_no: int, conn: socket.socket) -> bool:
        try:
            conn.recv(1)
        except OSError:
            pass
        return False

    url, seen = server(never_answer)
    with pytest.raises(requests.ReadTimeout):
        session(browser_retry()).get(url, timeout=(2, 0.5))
    assert seen["requests"] == 1
