"""The synchronous connection to coved: HTTP through httpx, the streaming exec through
websockets. It carries out the calls ``_core`` describes and turns coved's refusals into the
exceptions of ``errors``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, cast

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect, unix_connect

from . import _core
from ._config import Config, start_local_coved
from .errors import ConnectionFailed, api_error

#: The largest WebSocket message accepted: coved sends output in small pieces, 16 MiB is its
#: frame limit.
WS_MAX = 16 << 20


class Client:
    """A connection to one coved with one key, shared by the sandboxes made through it.

    ``host`` is ``http://HOST:PORT``, ``https://…`` or ``unix:/PATH``; without it,
    ``COVE_HOST``, else this machine's coved (``COVE_HOME/coved.sock``, started when none
    answers, as the CLI does). ``api_key`` defaults to ``COVE_API_KEY``; ``ca_cert`` (a PEM
    file) to ``COVE_CA_CERT``."""

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
        transport = httpx.HTTPTransport(uds=cfg.uds, verify=ctx if ctx is not None else True)
        self._http = httpx.Client(
            base_url=cfg.base_url,
            headers=cfg.headers(),
            timeout=httpx.Timeout(cfg.timeout, connect=10.0),
            transport=transport,
            trust_env=False,
        )
        self._started_local = False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _local_fallback(self) -> bool:
        """On a refused connection to the local coved, start it once; whether to try again."""
        if self.config.local and not self._started_local:
            self._started_local = True
            start_local_coved(self.config)
            return True
        return False

    def request(self, call: _core.Call, content: Any = None) -> httpx.Response:
        """Sends ``call``; its answer when it succeeded, else the API's exception. Retries what
        is safe to retry (``_core.should_retry``)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                res = self._http.request(
                    call.method, call.path, params=call.params, json=call.json, content=content
                )
            except httpx.ConnectError as e:
                if self._local_fallback() or (
                    content is None and _core.should_retry(call, None, attempt)
                ):
                    time.sleep(_core.backoff(attempt, None))
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
                time.sleep(_core.backoff(attempt, res.headers.get("retry-after")))
                continue
            raise err

    def json(self, call: _core.Call) -> Any:
        return self.request(call).json()

    def upload(self, call: _core.Call, body: Iterable[bytes] | bytes) -> httpx.Response:
        return self.request(call, content=body)

    @contextmanager
    def stream(self, call: _core.Call) -> Iterator[httpx.Response]:
        """A response read as it arrives (downloads, JSON lines), closed on leaving."""
        attempt = 0
        while True:
            attempt += 1
            try:
                req = self._http.build_request(
                    call.method, call.path, params=call.params, json=call.json,
                    timeout=httpx.Timeout(self.config.timeout, connect=10.0, read=None),
                )
                res = self._http.send(req, stream=True)
            except httpx.ConnectError as e:
                if self._local_fallback() or _core.should_retry(call, None, attempt):
                    time.sleep(_core.backoff(attempt, None))
                    continue
                raise ConnectionFailed(f"cannot reach coved at {self._where()}: {e}") from e
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"talking to coved at {self._where()}: {e}") from e
            try:
                if not res.is_success:
                    body = res.read()
                    err = api_error(res.status_code, body)
                    if _core.should_retry(call, res.status_code, attempt, err.code):
                        res.close()
                        time.sleep(_core.backoff(attempt, res.headers.get("retry-after")))
                        continue
                    raise err
                try:
                    yield res
                except httpx.HTTPError as e:
                    raise ConnectionFailed(f"the stream from coved broke: {e}") from e
                return
            finally:
                res.close()

    def websocket(self, path: str) -> ClientConnection:
        """A WebSocket to ``path``, with the key; coved's refusal as its API exception."""
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
                    ws = unix_connect(cfg.uds, uri, **kw)
                else:
                    ws = connect(uri, ssl=cfg.ssl_context(), **kw)
                # Held open across calls on purpose (a background command's handle): not a
                # `with` block, which websockets 17 would otherwise warn about.
                if hasattr(ws, "pending_legacy_warning"):
                    ws.pending_legacy_warning = False
                return cast(ClientConnection, ws)
            except InvalidStatus as e:
                raise api_error(e.response.status_code, bytes(e.response.body or b"")) from e
            except OSError as e:
                if attempt == 1 and self._local_fallback():
                    continue
                raise ConnectionFailed(f"cannot reach coved at {self._where()}: {e}") from e
            except WebSocketException as e:
                raise ConnectionFailed(f"the WebSocket to coved failed: {e}") from e
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return f"unix:{self.config.uds}" if self.config.uds else self.config.base_url
