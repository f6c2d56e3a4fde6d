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

The client is synchronous and thread-safe (``httpx.Client`` pools keep-alive connections and may
be shared by threads). It uses only standard ``eth_*``/``net_*``/``web3_*``/``debug_*`` methods
itself; nothing here depends on anvil-only methods, though callers may send any method name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx

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

    ``timeout`` is the per-HTTP-request timeout in seconds (a batch is one request, so allow for
    the node processing hundreds of calls). ``retries`` is how many times a request is re-sent
    after a transport error before :class:`NodeUnavailable` is raised; keep it small (the
    default 1 covers a keep-alive connection that the server closed while idle).
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
        self.url = url
        self.retries = retries
        self._next_id = 1
        self._id_lock = threading.Lock()
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
            headers=_HEADERS,
        )
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections. Further calls raise :class:`NodeUnavailable`."""
        self._closed = True
        self._client.close()

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
        if self._closed:
            raise NodeUnavailable(self.url, "client is closed")
        attempt = 0
        while True:
            try:
                response = self._client.post(self.url, content=body)
            except (httpx.TransportError, RuntimeError) as exc:
                # RuntimeError: httpx raises it when the client was closed by another thread.
                if attempt < self.retries and not self._closed:
                    attempt += 1
                    continue
                raise NodeUnavailable(self.url, f"{type(exc).__name__}: {exc}") from exc
            if response.status_code >= 500 and attempt < self.retries:
                attempt += 1
                continue
            break
        if response.status_code >= 500:
            raise NodeUnavailable(self.url, f"HTTP {response.status_code}: {_short(response.text)}")
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise RpcProtocolError(
                f"HTTP {response.status_code} from {self.url!r} is not JSON: "
                f"{_short(response.text)}"
            ) from exc


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


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
