"""ledger.rpc.RpcClient against a real anvil: calls, batches, per-item errors, transport errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
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
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


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


def test_thread_safe(rpc: RpcClient) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                assert rpc.batch([RpcRequest("eth_chainId"), RpcRequest("net_version")]) == [
                    hex(31337),
                    "31337",
                ]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
