"""A minimal keep-alive HTTP/1.1 client for the load generator.

On a 2-core machine the load generator shares the CPU with the service it measures. httpx costs
about a millisecond of CPU per request (and its connection pool scans every connection per
request), so at a few hundred requests per second the generator, not the service, becomes the
bottleneck. :class:`Connection` does the least a benchmark needs: one persistent connection,
``POST``/``GET`` with a JSON body, ``Content-Length`` responses (what uvicorn sends for JSON), no
redirects, no TLS, no chunked encoding (refused with :class:`HttpError`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Connection", "HttpError", "Response"]


class HttpError(Exception):
    """The connection failed or the server answered with something this client cannot read."""


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection to ``base_url`` (``http://host:port``); reconnects on demand."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def post(self, path: str, body: Any, headers: dict[str, str]) -> Response:
        return await self.request("POST", path, json.dumps(body).encode(), headers)

    async def get(self, path: str, headers: dict[str, str]) -> Response:
        return await self.request("GET", path, None, headers)

    async def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        try:
            return await asyncio.wait_for(
                self._exchange(method, path, body, headers), self._timeout
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length: int | None = None
        keep_alive = True
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding":
                raise HttpError(f"{method} {path}: transfer-encoding {value.strip()} not supported")
            elif name == "connection" and value.strip().lower() == "close":
                keep_alive = False
        payload = await reader.readexactly(length) if length else b""
        if not keep_alive:
            await self.close()
        return Response(status, payload)
