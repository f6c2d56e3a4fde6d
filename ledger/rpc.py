"""A small, fast, typed JSON-RPC 2.0 client over HTTP.

web3.py is fine for reading, but its per-call overhead (middleware, formatters, an
``eth_chainId`` round trip per call unless cached) limits raw transaction sending to a few dozen
transactions per second. The relayer needs two things web3.py does not do well: JSON-RPC
*batches* (one HTTP request carrying hundreds of ``eth_sendRawTransaction`` or
``eth_getTransactionReceipt`` calls) and cheap calls from background threads. This module does
exactly that and nothing else:

- :meth:`RpcClient.call` sends one request and returns its ``result`` or raises :class:`RpcError`.
- :meth:`RpcClient.batch` sends a list of requests in one HTTP POST, matches the responses by
  ``id`` (servers may reorder them) and returns one item per request, in request order: the
  ``result`` or an :class:`RpcError` *instance* (per-item errors are values, not exceptions, so
  one bad item does not hide the others).
- Transport failures (connection refused or reset, timeouts, a connection closed mid-response,
  HTTP 5xx) raise :class:`NodeUnavailable`. An idle keep-alive connection that the server closed is
  retried once on a fresh connection (``retries``); after that the caller decides.

Transport: the standard library's :mod:`http.client` (``HTTPConnection``, or ``HTTPSConnection``
with the default SSL context), behind a small pool of keep-alive connections of our own. The
callers (the relayer's receipt polling, the state cache's log polling) send many small requests
from background threads, where a general-purpose HTTP client's per-request cost (httpx/httpcore:
request and response models, header normalisation, pool bookkeeping, several layers of context
managers) dominated the time spent outside the node; a bare ``HTTPConnection`` per pooled socket
does one request in a fraction of that. The client is synchronous and thread-safe: a lock guards
the pool, a thread takes an idle connection or opens a new one, at most ``max_connections`` are
open at once (further threads wait for one to be given back), a connection goes back to the pool
only after its response was read completely, and one that failed or that the server answered with
``Connection: close`` is discarded.

It uses only standard ``eth_*``/``net_*``/``web3_*``/``debug_*`` methods itself; nothing here
depends on anvil-only methods, though callers may send any method name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote, urlsplit

from ledger.errors import ChainError, NodeError

__all__ = [
    "JsonValue",
    "NodeUnavailable",
    "RpcClient",
    "RpcError",
    "RpcProtocolError",
    "RpcRequest",
]

JsonValue = Any
"""A decoded JSON value (``None``, bool, int, float, str, list or dict)."""

_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class NodeUnavailable(NodeError):
    """The JSON-RPC endpoint could not be reached or dropped the connection.

    It is unknown whether the node processed the request: a send may or may not have reached
    the node's pool, so only idempotent requests (reads, re-sends of the same signed bytes)
    may be retried blindly.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"JSON-RPC node at {url!r} is unavailable: {reason}")
        self.url = url
        self.reason = reason


class RpcError(ChainError):
    """A JSON-RPC error object returned by the node for one request."""

    def __init__(
        self, code: int, message: str, data: JsonValue = None, *, method: str = ""
    ) -> None:
        where = f" in {method}" if method else ""
        extra = f" (data: {data!r})" if data is not None else ""
        super().__init__(f"JSON-RPC error {code}{where}: {message}{extra}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RpcError):
            return NotImplemented
        return (self.code, self.message, self.data, self.method) == (
            other.code,
            other.message,
            other.data,
            other.method,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.method))


class RpcProtocolError(ChainError):
    """The node answered, but not with a valid JSON-RPC 2.0 response."""


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """One request of a batch: ``method`` and positional ``params``."""

    method: str
    params: Sequence[JsonValue] = ()


class RpcClient:
    """Thread-safe JSON-RPC client over HTTP(S) with keep-alive connections.

    ``url`` is an ``http://`` or ``https://`` URL, optionally with a path and a query (both are
    sent as the request target) and user info (sent as HTTP basic authentication). ``timeout`` is
    the per-HTTP-request timeout in seconds (a batch is one request, so allow for the node
    processing hundreds of calls); connecting is limited to ``min(timeout, 5.0)`` seconds.
    ``retries`` is how many times a request is re-sent after a transport error or an HTTP 5xx
    before :class:`NodeUnavailable` is raised; keep it small (the default 1 covers a keep-alive
    connection that the server closed while idle). ``max_connections`` bounds the connections
    open at once; a thread that needs one while all are busy waits for one to be given back.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 1,
        max_connections: int = 16,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"JSON-RPC URL must be http:// or https://, got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port in JSON-RPC URL {url!r}") from exc
        host = parts.hostname
        if not host:
            raise ValueError(f"JSON-RPC URL has no host: {url!r}")
        self.url = url
        self.retries = retries
        self._host = host
        self._port = port if port is not None else _DEFAULT_PORTS[scheme]
        self._https = scheme == "https"
        self._ssl_context = ssl.create_default_context() if self._https else None
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = list(_HEADERS.items())
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(userinfo.encode()).decode("ascii")
            headers.append(("Authorization", f"Basic {token}"))
        self._headers: Final = tuple(headers)
        self._timeout = timeout
        self._connect_timeout = min(timeout, 5.0)
        self._max_connections = max_connections
        self._next_id = 1
        self._id_lock = threading.Lock()
        # The pool: idle connections (most recently used last), the ones a thread is using, and
        # how many are open in all (idle + busy + being opened), all guarded by ``_pool``.
        self._pool = threading.Condition(threading.Lock())
        self._idle: list[HTTPConnection] = []
        self._busy: set[HTTPConnection] = set()
        self._open = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections. Further calls raise :class:`NodeUnavailable`.

        Requests in flight in other threads are cut off (their sockets are shut down) and raise
        :class:`NodeUnavailable`; threads waiting for a free connection stop waiting and raise it.
        """
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            for conn in self._busy:
                # Wakes a thread blocked in recv()/send() on it; that thread closes the socket.
                sock = conn.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._pool.notify_all()
        for conn in idle:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RpcClient({self.url!r})"

    # -- calls -----------------------------------------------------------------------------

    def call(self, method: str, *params: JsonValue) -> JsonValue:
        """Send one request; return its ``result`` or raise :class:`RpcError`."""
        request_id = self._next_ids(1)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": method,
                "params": list(params),
            },
            separators=(",", ":"),
        ).encode()
        reply = self._post(body)
        if not isinstance(reply, dict):
            raise RpcProtocolError(
                f"expected a JSON-RPC response object for {method}, got {_short(reply)}"
            )
        return _unwrap(reply, method, raise_error=True)

    def batch(
        self, requests: Sequence[RpcRequest | tuple[str, Sequence[JsonValue]]]
    ) -> list[JsonValue]:
        """Send ``requests`` as one JSON-RPC batch.

        Returns one item per request, in request order: the ``result``, or an :class:`RpcError`
        instance for a request that failed. An empty ``requests`` sends nothing.
        """
        if not requests:
            return []
        reqs = [r if isinstance(r, RpcRequest) else RpcRequest(r[0], r[1]) for r in requests]
        first = self._next_ids(len(reqs))
        payload = [
            {
                "jsonrpc": "2.0",
                "id": first + i,
                "method": r.method,
                "params": list(r.params),
            }
            for i, r in enumerate(reqs)
        ]
        reply = self._post(json.dumps(payload, separators=(",", ":")).encode())
        if isinstance(reply, dict):
            # A server that refuses the whole batch answers with one error object.
            if "error" in reply:
                err = _error(reply["error"], "batch")
                return [err for _ in reqs]
            raise RpcProtocolError(f"expected a JSON-RPC batch response, got {_short(reply)}")
        if not isinstance(reply, list):
            raise RpcProtocolError(f"expected a JSON-RPC batch response, got {_short(reply)}")
        by_id: dict[int, dict[str, JsonValue]] = {}
        for item in reply:
            if isinstance(item, dict) and isinstance(item.get("id"), int):
                by_id[item["id"]] = item
        out: list[JsonValue] = []
        for i, r in enumerate(reqs):
            item = by_id.get(first + i)
            if item is None:
                out.append(
                    RpcError(
                        -32603,
                        f"no response for request id {first + i} in a batch of {len(reqs)}",
                        method=r.method,
                    )
                )
            else:
                out.append(_unwrap(item, r.method, raise_error=False))
        return out

    # -- internals -------------------------------------------------------------------------

    def _next_ids(self, n: int) -> int:
        with self._id_lock:
            first = self._next_id
            self._next_id = first + n
            return first

    def _post(self, body: bytes) -> JsonValue:
        attempt = 0
        fresh = False
        while True:
            conn = self._acquire(fresh=fresh)
            try:
                status, data, reusable = self._exchange(conn, body)
            except (HTTPException, OSError) as exc:
                # OSError covers the ConnectionError family, socket timeouts (TimeoutError) and
                # ssl.SSLError; HTTPException covers RemoteDisconnected, BadStatusLine,
                # IncompleteRead and the like.
                self._release(conn, reusable=False)
                if self._closed:
                    raise NodeUnavailable(self.url, "client is closed") from exc
                if attempt < self.retries:
                    attempt += 1
                    fresh = True
                    continue
                raise NodeUnavailable(self.url, f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                self._release(conn, reusable=False)
                raise
            self._release(conn, reusable=reusable)
            if status >= 500 and attempt < self.retries:
                attempt += 1
                fresh = False
                continue
            break
        if status >= 500:
            raise NodeUnavailable(self.url, f"HTTP {status}: {_short(_text(data))}")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RpcProtocolError(
                f"HTTP {status} from {self.url!r} is not JSON: {_short(_text(data))}"
            ) from exc

    def _exchange(self, conn: HTTPConnection, body: bytes) -> tuple[int, bytes, bool]:
        """Send one POST on ``conn``; return the status, the body and whether to keep ``conn``."""
        if conn.sock is None:
            self._connect(conn)
        conn.putrequest("POST", self._target, skip_accept_encoding=True)
        for name, value in self._headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        try:
            data = response.read()
            return response.status, data, not response.will_close
        finally:
            response.close()

    def _connect(self, conn: HTTPConnection) -> None:
        conn.connect()  # within the connect timeout; then the read timeout, per socket operation
        conn.sock.settimeout(self._timeout)

    def _acquire(self, *, fresh: bool) -> HTTPConnection:
        """Take an idle connection (unless ``fresh``) or a new, unconnected one.

        Blocks while ``max_connections`` are open and none is idle. A ``fresh`` request (a retry
        after a transport error) never reuses an idle connection: one that went stale while idle
        suggests the others did too. If no slot is free it closes an idle one to make room.
        """
        stale: HTTPConnection | None = None
        with self._pool:
            while True:
                if self._closed:
                    raise NodeUnavailable(self.url, "client is closed")
                if self._idle and not fresh:
                    conn = self._idle.pop()
                    self._busy.add(conn)
                    return conn
                if self._open < self._max_connections:
                    self._open += 1
                    break
                if self._idle:  # fresh, and all slots held: replace an idle connection
                    stale = self._idle.pop(0)
                    break
                self._pool.wait()
            conn = self._new_connection()
            self._busy.add(conn)
        if stale is not None:
            stale.close()
        return conn

    def _new_connection(self) -> HTTPConnection:
        if self._https:
            return HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._ssl_context
            )
        return HTTPConnection(self._host, self._port, timeout=self._connect_timeout)

    def _release(self, conn: HTTPConnection, *, reusable: bool) -> None:
        """Give ``conn`` back to the pool, or close it (after an error, or if not ``reusable``)."""
        with self._pool:
            self._busy.discard(conn)
            keep = reusable and not self._closed and conn.sock is not None
            if keep:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._pool.notify()
        if not keep:
            conn.close()


def _error(obj: JsonValue, method: str) -> RpcError:
    if not isinstance(obj, dict):
        return RpcError(-32603, f"malformed error object {_short(obj)}", method=method)
    code = obj.get("code")
    message = obj.get("message")
    return RpcError(
        code if isinstance(code, int) else -32603,
        message if isinstance(message, str) else repr(message),
        obj.get("data"),
        method=method,
    )


def _unwrap(item: dict[str, JsonValue], method: str, *, raise_error: bool) -> JsonValue:
    if "error" in item and item["error"] is not None:
        err = _error(item["error"], method)
        if raise_error:
            raise err
        return err
    if "result" not in item:
        if raise_error:
            raise RpcProtocolError(
                f"response to {method} has neither result nor error: {_short(item)}"
            )
        return RpcError(
            -32603,
            f"response has neither result nor error: {_short(item)}",
            method=method,
        )
    return item["result"]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
