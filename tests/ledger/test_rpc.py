"""ledger.rpc.RpcClient against a real anvil: calls, batches, per-item errors, transport errors."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from ledger.errors import ChainError, LedgerError, NodeError
from ledger.node import AnvilNode
from ledger.rpc import NodeUnavailable, RpcClient, RpcError, RpcProtocolError, RpcRequest


@pytest.fixture
def rpc(anvil_node: AnvilNode) -> Iterator[RpcClient]:
    with RpcClient(anvil_node.rpc_url) as client:
        yield client


def _send_json(handler: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    """Answer a test server's request with ``data`` as JSON."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.mode = mode
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    """Forwards to anvil, then misbehaves as the server's ``mode`` says."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        mode = self.server.mode
        if mode == "drop-first" and self.server.requests == 1:
            self.close_connection = True  # no response at all: the client sees a disconnect
            return
        if mode == "500":
            self._reply(500, b"upstream exploded")
            return
        if mode == "garbage":
            self._reply(200, b"<html>not json</html>")
            return
        import urllib.request

        req = urllib.request.Request(
            self.server.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        if mode == "reverse":
            reply = json.loads(data)
            if isinstance(reply, list):
                data = json.dumps(reply[::-1]).encode()
        self._reply(200, data)

    def _reply(self, status: int, data: bytes) -> None:
        _send_json(self, status, data)


@pytest.fixture
def proxy(anvil_node: AnvilNode, request: pytest.FixtureRequest) -> Iterator[_Server]:
    server = _Server(anvil_node.rpc_url, getattr(request, "param", "pass"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_single_call(rpc: RpcClient) -> None:
    assert rpc.call("eth_chainId") == hex(31337)
    assert isinstance(rpc.call("eth_blockNumber"), str)


def test_call_error_is_typed(rpc: RpcClient) -> None:
    with pytest.raises(RpcError) as info:
        rpc.call("eth_noSuchMethod", 1)
    err = info.value
    assert err.code == -32601
    assert err.method == "eth_noSuchMethod"
    assert "eth_noSuchMethod" in str(err)
    assert isinstance(err, ChainError)
    assert isinstance(err, LedgerError)


def test_revert_data_in_error(rpc: RpcClient, dev_accounts: list[LocalAccount]) -> None:
    # init code that reverts with the 4 bytes 0xdeadbeef: PUSH4 deadbeef PUSH1 0 MSTORE
    # PUSH1 4 PUSH1 28 REVERT
    code = "0x63deadbeef6000526004601cfd"
    with pytest.raises(RpcError) as info:
        rpc.call("eth_call", {"from": dev_accounts[0].address, "data": code}, "latest")
    assert info.value.data == "0xdeadbeef"


def test_batch_in_order_with_per_item_errors(
    rpc: RpcClient, dev_accounts: list[LocalAccount]
) -> None:
    address = dev_accounts[0].address
    results = rpc.batch(
        [
            RpcRequest("eth_chainId"),
            ("eth_noSuchMethod", []),
            RpcRequest("eth_getBalance", (address, "latest")),
            RpcRequest("eth_getTransactionReceipt", ("0x" + "00" * 32,)),
        ]
    )
    assert results[0] == hex(31337)
    assert isinstance(results[1], RpcError)
    assert results[1].code == -32601
    assert int(results[2], 16) > 0
    assert results[3] is None


def test_empty_batch_sends_nothing(rpc: RpcClient) -> None:
    assert rpc.batch([]) == []


def test_large_batch(rpc: RpcClient) -> None:
    results = rpc.batch([RpcRequest("eth_chainId") for _ in range(1000)])
    assert results == [hex(31337)] * 1000


@pytest.mark.parametrize("proxy", ["reverse"], indirect=True)
def test_batch_matches_responses_by_id(proxy: _Server, dev_accounts: list[LocalAccount]) -> None:
    addresses = [a.address for a in dev_accounts[:5]]
    with RpcClient(proxy.url) as client:
        direct = [client.call("eth_getTransactionCount", a, "latest") for a in addresses]
        batched = client.batch(
            [RpcRequest("eth_getTransactionCount", (a, "latest")) for a in addresses]
            + [RpcRequest("eth_noSuchMethod")]
        )
    assert batched[:5] == direct
    assert isinstance(batched[5], RpcError)


def test_connection_refused_is_node_unavailable() -> None:
    port = _closed_port()
    with RpcClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(NodeUnavailable) as info:
            client.call("eth_chainId")
        assert str(port) in str(info.value)
        assert isinstance(info.value, NodeError)
        with pytest.raises(NodeUnavailable):
            client.batch([RpcRequest("eth_chainId")])


@pytest.mark.parametrize("proxy", ["drop-first"], indirect=True)
def test_dropped_connection_is_retried_once(proxy: _Server) -> None:
    with RpcClient(proxy.url, retries=1) as client:
        assert client.batch([RpcRequest("eth_chainId")]) == [hex(31337)]
    assert proxy.requests == 2


@pytest.mark.parametrize("proxy", ["drop-first"], indirect=True)
def test_dropped_connection_without_retries_raises(proxy: _Server) -> None:
    with RpcClient(proxy.url, retries=0) as client:
        with pytest.raises(NodeUnavailable, match=r"disconnected|closed|RemoteProtocolError"):
            client.call("eth_chainId")
        assert client.call("eth_chainId") == hex(31337)  # the next call gets a new connection


@pytest.mark.parametrize("proxy", ["500"], indirect=True)
def test_http_500_is_node_unavailable(proxy: _Server) -> None:
    with RpcClient(proxy.url, retries=0) as client, pytest.raises(NodeUnavailable, match="500"):
        client.call("eth_chainId")


@pytest.mark.parametrize("proxy", ["garbage"], indirect=True)
def test_non_json_is_protocol_error(proxy: _Server) -> None:
    with RpcClient(proxy.url) as client, pytest.raises(RpcProtocolError, match="not JSON"):
        client.call("eth_chainId")


def test_closed_client_refuses(anvil_node: AnvilNode) -> None:
    client = RpcClient(anvil_node.rpc_url)
    client.close()
    with pytest.raises(NodeUnavailable, match="closed"):
        client.call("eth_chainId")


def _in_threads(count: int, work: Callable[[], None]) -> list[BaseException]:
    """Run ``work`` on ``count`` threads at once; what they raised."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_thread_safe(rpc: RpcClient) -> None:
    def work() -> None:
        for _ in range(50):
            assert rpc.batch([RpcRequest("eth_chainId"), RpcRequest("net_version")]) == [
                hex(31337),
                "31337",
            ]

    assert _in_threads(8, work) == []


# -- the transport, against a local JSON-RPC server of its own ------------------------------

Answer = Callable[["_JsonServer", int, Any], tuple[int, bytes]]


def _result(request: Any, value: Any = "0x1") -> tuple[int, bytes]:
    """A 200 answering ``request`` (an object or a batch) with ``value`` for every call."""
    if isinstance(request, list):
        reply: Any = [{"jsonrpc": "2.0", "id": r["id"], "result": value} for r in request]
    else:
        reply = {"jsonrpc": "2.0", "id": request["id"], "result": value}
    return 200, json.dumps(reply).encode()


class _JsonServer(ThreadingHTTPServer):
    """An HTTP/1.1 keep-alive JSON-RPC server that counts connections and requests.

    ``answer(server, n, request)`` gives the status and body of the ``n``-th request (from 1).
    Handler threads are not daemons, so ``server_close()`` waits for them: every socket is closed
    when the fixture returns.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JsonHandler)
        self.answer: Answer = lambda server, n, request: _result(request)
        self.idle_timeout = 5.0  # seconds a keep-alive connection may sit idle before we close it
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.paths: list[str] = []
        self.received = threading.Event()  # set by slow answers once they have the request
        self.release = threading.Event()  # lets slow answers go on (set at teardown)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-response (the timeout and close tests) is expected


class _JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stalls
    server: _JsonServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        with self.server.lock:
            self.server.connections += 1
            self.server.open_now += 1
            self.server.max_open = max(self.server.max_open, self.server.open_now)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.open_now -= 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.requests += 1
            n = self.server.requests
            self.server.paths.append(self.path)
        status, data = self.server.answer(self.server, n, json.loads(body))
        _send_json(self, status, data)


@pytest.fixture
def server() -> Iterator[_JsonServer]:
    srv = _JsonServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _slow(server: _JsonServer, n: int, request: Any) -> tuple[int, bytes]:
    server.received.set()
    server.release.wait(5)
    return _result(request)


def test_keep_alive_reuses_one_connection(server: _JsonServer) -> None:
    with RpcClient(server.url) as client:
        for _ in range(50):
            assert client.call("eth_blockNumber") == "0x1"
        assert client.batch([RpcRequest("eth_chainId")] * 3) == ["0x1"] * 3
    assert server.requests == 51
    assert server.connections == 1


def test_idle_connection_closed_by_server_is_retried(server: _JsonServer) -> None:
    server.idle_timeout = 0.1  # the server drops keep-alive connections idle for 0.1 s
    with RpcClient(server.url, retries=1) as client:
        assert client.call("eth_blockNumber") == "0x1"
        time.sleep(0.3)
        assert client.call("eth_blockNumber") == "0x1"  # the stale one fails; a fresh one works
    assert server.requests == 2
    assert server.connections == 2


def test_idle_connection_closed_by_server_without_retries(server: _JsonServer) -> None:
    server.idle_timeout = 0.1
    with RpcClient(server.url, retries=0) as client:
        assert client.call("eth_blockNumber") == "0x1"
        time.sleep(0.3)
        # The send or the read fails, depending on how far the server's close got.
        with pytest.raises(NodeUnavailable, match=r"Disconnected|Reset|BrokenPipe|Aborted"):
            client.call("eth_blockNumber")
        assert client.call("eth_blockNumber") == "0x1"  # the failed connection was discarded


def test_503_then_200_is_retried(server: _JsonServer) -> None:
    server.answer = lambda srv, n, req: (503, b"busy") if n == 1 else _result(req, "0x2a")
    with RpcClient(server.url, retries=1) as client:
        assert client.call("eth_blockNumber") == "0x2a"
    assert server.requests == 2
    assert server.connections == 1  # a complete 503 leaves the connection usable


def test_500_twice_is_node_unavailable(server: _JsonServer) -> None:
    server.answer = lambda srv, n, req: (500, b"upstream exploded")
    with RpcClient(server.url, retries=1) as client:
        with pytest.raises(NodeUnavailable, match=r"HTTP 500: upstream exploded") as info:
            client.call("eth_blockNumber")
        assert info.value.url == server.url
    assert server.requests == 2


def test_non_json_body_is_protocol_error(server: _JsonServer) -> None:
    server.answer = lambda srv, n, req: (200, b"<html>not json</html>") if n == 1 else _result(req)
    with RpcClient(server.url) as client:
        with pytest.raises(RpcProtocolError, match=r"HTTP 200 .* not JSON: <html>not json"):
            client.call("eth_blockNumber")
        assert client.call("eth_blockNumber") == "0x1"
    assert server.requests == 2  # not retried
    assert server.connections == 1


def test_connection_refused_after_retries() -> None:
    port = _closed_port()
    with (
        RpcClient(f"http://127.0.0.1:{port}", retries=2) as client,
        pytest.raises(NodeUnavailable, match=r"ConnectionRefusedError") as info,
    ):
        client.call("eth_blockNumber")
    assert info.value.url == f"http://127.0.0.1:{port}"


def test_read_timeout_is_node_unavailable(server: _JsonServer) -> None:
    server.answer = _slow
    with RpcClient(server.url, timeout=0.2, retries=1) as client:
        started = time.monotonic()
        with pytest.raises(NodeUnavailable, match=r"TimeoutError|timed out"):
            client.call("eth_blockNumber")
        assert time.monotonic() - started < 2.0  # two attempts of 0.2 s, not the server's 5 s
    assert server.requests == 2


def test_max_connections_respected_by_16_threads(server: _JsonServer) -> None:
    def slowish(srv: _JsonServer, n: int, request: Any) -> tuple[int, bytes]:
        time.sleep(0.02)
        return _result(request)

    server.answer = slowish
    with RpcClient(server.url, max_connections=4) as client:

        def work() -> None:
            for _ in range(5):
                assert client.call("eth_blockNumber") == "0x1"

        errors = _in_threads(16, work)
    assert errors == []
    assert server.requests == 80
    assert server.max_open == 4
    assert server.connections == 4  # pooled and reused, never more than the limit


def test_close_while_a_request_is_in_flight(server: _JsonServer) -> None:
    server.answer = _slow
    client = RpcClient(server.url, timeout=10, max_connections=1)
    outcomes: list[BaseException | object] = []

    def call() -> None:
        try:
            outcomes.append(client.call("eth_blockNumber"))
        except BaseException as exc:
            outcomes.append(exc)

    in_flight = threading.Thread(target=call)
    waiting = threading.Thread(target=call)  # waits for the only connection
    in_flight.start()
    assert server.received.wait(5)
    waiting.start()
    time.sleep(0.1)
    started = time.monotonic()
    client.close()
    in_flight.join(5)
    waiting.join(5)
    assert not in_flight.is_alive()
    assert not waiting.is_alive()
    assert time.monotonic() - started < 2.0
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, NodeUnavailable), outcome
        assert "closed" in str(outcome)
    with pytest.raises(NodeUnavailable, match="closed"):
        client.call("eth_blockNumber")
    assert server.requests == 1


def test_url_path_and_query_reach_the_server(server: _JsonServer) -> None:
    with RpcClient(f"{server.url}/rpc/v1?key=x%20y&b=2") as client:
        assert client.call("eth_blockNumber") == "0x1"
    with RpcClient(server.url) as client:
        assert client.call("eth_blockNumber") == "0x1"
    assert server.paths == ["/rpc/v1?key=x%20y&b=2", "/"]


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8545", "ftp://node/rpc", "127.0.0.1:8545"])
def test_bad_scheme_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        RpcClient(url)


def test_negative_retries_are_rejected() -> None:
    with pytest.raises(ValueError, match="retries"):
        RpcClient("http://127.0.0.1:8545", retries=-1)
