"""How the load test's users retry, like a browser and no more.

A server may close an idle kept-alive connection at the instant a client reuses it (an
nginx reload closes its idle connections). Browsers then resend the request, whatever
its method, on a new connection: nothing reached the server's application, so nothing
can be done twice. The load test does the same, so that a graceful reload does not count
as an error a real user would have seen, while timeouts, HTTP errors and any failure
after the server began to answer still count.
"""
from __future__ import annotations

import http.client
from types import TracebackType
from typing import Self

from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import ProtocolError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

IDEMPOTENT = frozenset({"GET", "HEAD"})


def closed_before_reply(error: Exception | None) -> bool:
    """True when the connection was closed or reset before any byte of the answer."""
    if not isinstance(error, ProtocolError):
        return False
    causes = [a for a in error.args if isinstance(a, BaseException)]
    return any(isinstance(c, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
               for c in causes)


class BrowserRetry(Retry):
    """One retry, of any method, when the connection failed or was closed before any byte of
    a reply; never after a timeout or a reply cut short. Unlike a browser, it cannot tell a
    kept-alive connection from a fresh one: a fresh connection reset before a reply is also
    sent again (the server's application had not answered it)."""

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None, _stacktrace: TracebackType | None = None) -> Self:
        allowed = frozenset(self.allowed_methods or ())
        if error is not None and self._is_read_error(error) and not closed_before_reply(error):
            # a timeout, or an answer cut short: the server may have acted; a user sees an error
            return Retry.increment(self.new(read=False), method, url, response, error, _pool, _stacktrace)
        if method and method.upper() not in allowed and closed_before_reply(error):
            widened = self.new(allowed_methods=allowed | {method.upper()})
            return widened.increment(method, url, response, error, _pool, _stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def browser_retry() -> BrowserRetry:
    return BrowserRetry(total=1, connect=1, read=1, status=0, other=0, redirect=False,
                        allowed_methods=IDEMPOTENT, raise_on_status=False)
