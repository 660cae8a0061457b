"""The asynchronous connection to coved: :class:`~cove._client.Client` with ``await``; the
same calls (``_core``), the same retry rule and errors."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterable, AsyncIterator, Iterable

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from . import _core
from ._client import WS_MAX
from ._config import Config, start_local_coved
from .errors import ConnectionFailed, api_error


class AsyncClient:
    """A connection to one coved with one key, for ``asyncio`` (see :class:`cove.Client` for
    where it connects)."""

    def __init__(
        self,
        host: str | None = None,
        api_key: str | None = None,
        *,
        ca_cert: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = Config.resolve(host, api_key, ca_cert, timeout)
        cfg = self.config
        ctx = cfg.ssl_context()
        transport = httpx.AsyncHTTPTransport(uds=cfg.uds, verify=ctx if ctx is not None else True)
        self._http = httpx.AsyncClient(
            base_url=cfg.base_url,
            headers=cfg.headers(),
            timeout=httpx.Timeout(cfg.timeout, connect=10.0),
            transport=transport,
            trust_env=False,
        )
        self._started_local = False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _local_fallback(self) -> bool:
        if self.config.local and not self._started_local:
            self._started_local = True
            await asyncio.to_thread(start_local_coved, self.config)
            return True
        return False

    def _where(self) -> str:
        return f"unix:{self.config.uds}" if self.config.uds else self.config.base_url

    async def request(
        self, call: _core.Call, content: bytes | Iterable[bytes] | AsyncIterable[bytes] | None = None
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                res = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json, content=content
                )
            except httpx.ConnectError as e:
                if await self._local_fallback() or (
                    content is None and _core.should_retry(call, None, attempt)
                ):
                    await asyncio.sleep(_core.backoff(attempt, None))
                    continue
                raise ConnectionFailed(f"cannot reach coved at {self._where()}: {e}") from e
            except httpx.TimeoutException as e:
                raise ConnectionFailed(f"coved at {self._where()} did not answer in time: {e}") from e
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"talking to coved at {self._where()}: {e}") from e
            if res.is_success:
                return res
            err = api_error(res.status_code, res.content)
            if content is None and _core.should_retry(call, res.status_code, attempt, err.code):
                await asyncio.sleep(_core.backoff(attempt, res.headers.get("retry-after")))
                continue
            raise err

    async def json(self, call: _core.Call) -> Any:
        return (await self.request(call)).json()

    @asynccontextmanager
    async def stream(self, call: _core.Call) -> AsyncIterator[httpx.Response]:
        attempt = 0
        while True:
            attempt += 1
            try:
                req = self._http.build_request(
                    call.method, call.path, params=call.params, json=call.json,
                    timeout=httpx.Timeout(self.config.timeout, connect=10.0, read=None),
                )
                res = await self._http.send(req, stream=True)
            except httpx.ConnectError as e:
                if await self._local_fallback() or _core.should_retry(call, None, attempt):
                    await asyncio.sleep(_core.backoff(attempt, None))
                    continue
                raise ConnectionFailed(f"cannot reach coved at {self._where()}: {e}") from e
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"talking to coved at {self._where()}: {e}") from e
            try:
                if not res.is_success:
                    body = await res.aread()
                    err = api_error(res.status_code, body)
                    if _core.should_retry(call, res.status_code, attempt, err.code):
                        await res.aclose()
                        await asyncio.sleep(_core.backoff(attempt, res.headers.get("retry-after")))
                        continue
                    raise err
                try:
                    yield res
                except httpx.HTTPError as e:
                    raise ConnectionFailed(f"the stream from coved broke: {e}") from e
                return
            finally:
                await res.aclose()

    async def websocket(self, path: str) -> ClientConnection:
        cfg = self.config
        uri = cfg.ws_base + path
        kw: dict[str, Any] = dict(
            additional_headers=cfg.headers(),
            max_size=WS_MAX,
            compression=None,
            open_timeout=30,
            ping_interval=None,
            proxy=None,
        )
        for attempt in (1, 2):
            try:
                if cfg.uds:
                    return await unix_connect(cfg.uds, uri, **kw)
                return await connect(uri, ssl=cfg.ssl_context(), **kw)
            except InvalidStatus as e:
                raise api_error(e.response.status_code, bytes(e.response.body or b"")) from e
            except OSError as e:
                if attempt == 1 and await self._local_fallback():
                    continue
                raise ConnectionFailed(f"cannot reach coved at {self._where()}: {e}") from e
            except WebSocketException as e:
                raise ConnectionFailed(f"the WebSocket to coved failed: {e}") from e
        raise AssertionError("unreachable")
