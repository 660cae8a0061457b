"""Sandboxes with ``async``/``await``: :class:`AsyncSandbox` mirrors :class:`cove.Sandbox`
method for method, over the same calls (``_core``)."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import weakref
from contextlib import AsyncExitStack
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generic,
    Literal,
    Mapping,
    Sequence,
    TypeVar,
    Union,
    overload,
)

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from . import _core
from ._async_client import AsyncClient
from ._core import Call, Collected, Exited, OnExpire, OnIdle, Output, Seconds, Started
from ._stdin import AsyncData, chunks
from .errors import ConnectionFailed, NotFound
from .models import (
    CommandInfo,
    CommandResult,
    Event,
    FileInfo,
    FsEvent,
    Metrics,
    NetworkPolicy,
    PortUrl,
    Process,
    SandboxInfo,
    SandboxState,
    Snapshot,
)

T = TypeVar("T")
#: A callback for output: a function, or a coroutine function.
OnData = Callable[[bytes], Union[None, Awaitable[None]]]

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], AsyncClient]]
_clients = weakref.WeakKeyDictionary()


def default_client(host: str | None = None, api_key: str | None = None) -> AsyncClient:
    """The client for ``host`` and ``api_key`` (or the environment's) in this event loop,
    made once and shared by its sandboxes."""
    loop = asyncio.get_running_loop()
    per = _clients.setdefault(loop, {})
    k = (host, api_key, os.environ.get("COVE_HOST"), os.environ.get("COVE_API_KEY"))
    c = per.get(k)
    if c is None:
        c = per[k] = AsyncClient(host, api_key)
    return c


async def _call(cb: OnData | None, data: bytes) -> None:
    if cb is not None:
        r = cb(data)
        if r is not None:
            await r


async def _achunks(data: AsyncData) -> AsyncIterator[bytes]:
    if hasattr(data, "__aiter__"):
        async for b in data:
            if b:
                yield bytes(b)
    else:
        for b in chunks(data):
            yield b


class AsyncStream(Generic[T]):
    """Items as coved sends them, until it ends or :meth:`aclose`; ``async with`` it."""

    def __init__(self, items: AsyncIterator[T], stack: AsyncExitStack) -> None:
        self._items = items
        self._stack = stack

    @classmethod
    async def open(
        cls,
        client: AsyncClient,
        call: Call,
        parse: Callable[[httpx.Response], AsyncIterator[T]],
    ) -> AsyncStream[T]:
        stack = AsyncExitStack()
        res = await stack.enter_async_context(client.stream(call))
        return cls(parse(res), stack)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._items.__anext__()
        except httpx.HTTPError as e:
            await self.aclose()
            raise ConnectionFailed(f"the stream from coved broke: {e}") from e
        except StopAsyncIteration:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _json_lines(parse: Callable[[Any], T]) -> Callable[[httpx.Response], AsyncIterator[T]]:
    async def go(res: httpx.Response) -> AsyncIterator[T]:
        async for line in res.aiter_lines():
            if line.strip():
                yield parse(json.loads(line))

    return go


async def _recv(ws: ClientConnection) -> _core.ExecMessage | None | Literal[False]:
    try:
        return _core.decode(await ws.recv())
    except ConnectionClosed:
        return False


async def _started(ws: ClientConnection) -> int:
    while True:
        m = await _recv(ws)
        if m is False:
            raise ConnectionFailed("coved closed the exec stream before the command started")
        if isinstance(m, Started):
            return m.pid
        if isinstance(m, Exited):
            raise ConnectionFailed("the command ended before it started")


async def _pump(
    ws: ClientConnection, got: Collected, on_stdout: OnData | None, on_stderr: OnData | None
) -> None:
    while True:
        m = await _recv(ws)
        if m is False:
            if got.exited is None:
                raise ConnectionFailed("the exec stream ended before the command did")
            return
        if isinstance(m, Output):
            if m.stream == "stdout":
                got.stdout += m.data
                await _call(on_stdout, m.data)
            else:
                got.stderr += m.data
                await _call(on_stderr, m.data)
        elif isinstance(m, Exited):
            got.exited = m
            await ws.close()
            return


async def _feed(ws: ClientConnection, data: AsyncData) -> None:
    try:
        async for b in _achunks(data):
            await ws.send(b)
        await ws.send(_core.EOF_MSG)
    except ConnectionClosed:
        pass


def _result(got: Collected) -> CommandResult:
    ex = got.exited or Exited(-1, False)
    return CommandResult(ex.exit_code, bytes(got.stdout), bytes(got.stderr), ex.timed_out, got.pid)


class AsyncCommandHandle:
    """A command running in the background (see :class:`cove.CommandHandle`)."""

    def __init__(
        self,
        commands: AsyncCommands,
        ws: ClientConnection,
        pid: int,
        on_stdout: OnData | None,
        on_stderr: OnData | None,
        owns_stdin: bool,
    ) -> None:
        self._commands = commands
        self._ws = ws
        self.pid = pid
        self._got = Collected(pid=pid)
        self._owns_stdin = owns_stdin
        self._task = asyncio.get_running_loop().create_task(
            _pump(ws, self._got, on_stdout, on_stderr)
        )

    @property
    def exit_code(self) -> int | None:
        return self._got.exited.exit_code if self._got.exited else None

    @property
    def stdout(self) -> str:
        return bytes(self._got.stdout).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._got.stderr).decode("utf-8", "replace")

    async def wait(self, timeout: float | None = None, *, check: bool = False) -> CommandResult:
        """Waits for the end; ``TimeoutError`` after ``timeout`` seconds (it goes on)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"command {self.pid} still runs") from None
        r = _result(self._got)
        return r.check() if check else r

    async def send_stdin(self, data: bytes | str) -> None:
        if self._owns_stdin:
            try:
                for b in chunks(data):
                    await self._ws.send(b)
                return
            except ConnectionClosed:
                pass
        await self._commands.send_stdin(self.pid, data)

    async def close_stdin(self) -> None:
        if self._owns_stdin:
            try:
                await self._ws.send(_core.EOF_MSG)
                return
            except ConnectionClosed:
                pass
        await self._commands.send_stdin(self.pid, b"", eof=True)

    async def resize(self, rows: int, cols: int) -> None:
        await self._commands._resize(self.pid, rows, cols)

    async def kill(self, signal: int = 9) -> None:
        await self._commands.kill(self.pid, signal)

    async def disconnect(self) -> None:
        """Stops following it; it runs on."""
        await self._ws.close()
        try:
            await asyncio.wait_for(self._task, 10)
        except (ConnectionFailed, asyncio.TimeoutError):
            pass


class AsyncOutputStream:
    """A command's output as an async iterator of :class:`~cove.Output`; :attr:`result` once
    it is exhausted."""

    def __init__(self, ws: ClientConnection, pid: int, feeder: asyncio.Task[None] | None) -> None:
        self._ws = ws
        self.pid = pid
        self._got = Collected(pid=pid)
        self._feeder = feeder
        self.result: CommandResult | None = None

    async def __aiter__(self) -> AsyncIterator[Output]:
        while self.result is None:
            m = await _recv(self._ws)
            if m is False:
                raise ConnectionFailed("the exec stream ended before the command did")
            if isinstance(m, Output):
                yield m
            elif isinstance(m, Exited):
                self._got.exited = m
                self.result = _result(self._got)
                await self._ws.close()

    async def aclose(self) -> None:
        await self._ws.close()
        if self._feeder:
            self._feeder.cancel()

    async def __aenter__(self) -> AsyncOutputStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncCommands:
    """Running commands in a sandbox (``sandbox.commands``)."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    async def _open(
        self,
        cmd: list[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        user: str | None,
        timeout: Seconds | None,
        stdin: bool,
        tty: tuple[int, int] | None = None,
        tag: str | None = None,
        keep: bool = False,
    ) -> tuple[ClientConnection, int]:
        ws = await self._sbx._client.websocket(_core.sandbox_path(self._sbx.id, "/exec/ws"))
        try:
            await ws.send(_core.exec_start(cmd, env, cwd, user, timeout, stdin, tty, tag, keep))
            return ws, await _started(ws)
        except BaseException:
            await ws.close()
            raise

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: AsyncData | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | None = ...,
        timeout: Seconds | None = ...,
        on_stdout: OnData | None = ...,
        on_stderr: OnData | None = ...,
        background: Literal[False] = ...,
        tag: str | None = ...,
        check: bool = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: AsyncData | bool | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | None = ...,
        timeout: Seconds | None = ...,
        on_stdout: OnData | None = ...,
        on_stderr: OnData | None = ...,
        background: Literal[True],
        tag: str | None = ...,
        check: bool = ...,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: AsyncData | bool | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Seconds | None = None,
        on_stdout: OnData | None = None,
        on_stderr: OnData | None = None,
        background: bool = False,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult | AsyncCommandHandle:
        """See :meth:`cove.Commands.run`; callbacks may be coroutine functions, ``stdin`` an
        async iterable too."""
        argv = _core.argv(cmd)
        feed = stdin if stdin is not None and stdin is not True and stdin is not False else None
        wants_stdin = stdin is not None and stdin is not False
        if background:
            ws, pid = await self._open(argv, env, cwd, user, timeout, wants_stdin, None, tag, True)
            h = AsyncCommandHandle(self, ws, pid, on_stdout, on_stderr, wants_stdin)
            if feed is not None:
                await _feed(ws, feed)
            return h
        if tag is not None:
            raise ValueError("tag names a background command: pass background=True")
        ws, pid = await self._open(argv, env, cwd, user, timeout, wants_stdin)
        got = Collected(pid=pid)
        feeder = None
        try:
            if feed is not None:
                feeder = asyncio.get_running_loop().create_task(_feed(ws, feed))
            await _pump(ws, got, on_stdout, on_stderr)
        finally:
            await ws.close()
            if feeder:
                feeder.cancel()
        r = _result(got)
        return r.check() if check else r

    async def stream(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: AsyncData | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Seconds | None = None,
    ) -> AsyncOutputStream:
        """See :meth:`cove.Commands.stream`: ``async for out in await commands.stream(…)``."""
        ws, pid = await self._open(_core.argv(cmd), env, cwd, user, timeout, stdin is not None)
        feeder = None
        if stdin is not None:
            feeder = asyncio.get_running_loop().create_task(_feed(ws, stdin))
        return AsyncOutputStream(ws, pid, feeder)

    async def list(self) -> builtins.list[CommandInfo]:
        d = await self._sbx._client.json(
            Call("GET", _core.sandbox_path(self._sbx.id, "/commands"), idempotent=True)
        )
        return [CommandInfo.from_json(c) for c in d["items"]]

    async def connect(
        self,
        command: int | str,
        *,
        on_stdout: OnData | None = None,
        on_stderr: OnData | None = None,
    ) -> AsyncCommandHandle:
        path = _core.command_path(self._sbx.id, command, "/ws")
        ws = await self._sbx._client.websocket(path)
        try:
            pid = await _started(ws)
        except BaseException:
            await ws.close()
            raise
        return AsyncCommandHandle(self, ws, pid, on_stdout, on_stderr, False)

    async def kill(self, command: int | str, signal: int = 9) -> None:
        await self._sbx._client.request(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/signal"),
                json={"signal": int(signal)},
            )
        )

    async def send_stdin(self, command: int | str, data: bytes | str, *, eof: bool = False) -> None:
        body = data.encode() if isinstance(data, str) else data
        await self._sbx._client.request(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/stdin"),
                params={"eof": "true"} if eof else None,
            ),
            content=body,
        )

    async def _resize(self, command: int | str, rows: int, cols: int) -> None:
        await self._sbx._client.request(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/resize"),
                json={"rows": rows, "cols": cols},
                idempotent=True,
            )
        )


class AsyncPty:
    def __init__(self, commands: AsyncCommands) -> None:
        self._commands = commands

    async def create(
        self,
        rows: int = 24,
        cols: int = 80,
        *,
        cmd: str | Sequence[str] | None = None,
        on_data: OnData | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Seconds | None = None,
        tag: str | None = None,
    ) -> AsyncCommandHandle:
        """See :meth:`cove.sandbox.Pty.create`."""
        argv = _core.LOGIN_SHELL if cmd is None else _core.argv(cmd)
        e = {"TERM": "xterm-256color", **(env or {})}
        ws, pid = await self._commands._open(
            argv, e, cwd, user, timeout, True, (rows, cols), tag, True
        )
        return AsyncCommandHandle(self._commands, ws, pid, on_data, None, True)


class AsyncFiles:
    """See :class:`cove.sandbox.Files`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    def _call(self, method: str, rest: str, path: str, **kw: Any) -> Call:
        params = {"path": path, **kw.pop("params", {})}
        return Call(method, _core.sandbox_path(self._sbx.id, rest), params=params, **kw)

    async def read(self, path: str) -> bytes:
        out = bytearray()
        async with await self.read_stream(path) as s:
            async for b in s:
                out += b
        return bytes(out)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def read_stream(self, path: str, chunk_size: int = 256 << 10) -> AsyncStream[bytes]:
        async def parse(res: httpx.Response) -> AsyncIterator[bytes]:
            async for b in res.aiter_bytes(chunk_size):
                yield b

        return await AsyncStream.open(
            self._sbx._client, self._call("GET", "/files", path, idempotent=True), parse
        )

    async def download(self, path: str, local_path: str | os.PathLike[str]) -> int:
        n = 0
        with open(local_path, "wb") as f:
            async with await self.read_stream(path) as s:
                async for b in s:
                    f.write(b)
                    n += len(b)
        return n

    async def write(self, path: str, data: AsyncData, *, mode: int | None = None) -> int:
        call = self._call("PUT", "/files", path, params=_core.mode_param(mode))
        w = _core.whole(data)
        res = await self._sbx._client.request(call, content=w if w is not None else _achunks(data))
        return int(res.json()["bytes"])

    async def upload(
        self, local_path: str | os.PathLike[str], path: str, *, mode: int | None = None
    ) -> int:
        with open(local_path, "rb") as f:
            return await self.write(path, f, mode=mode)

    async def list(self, path: str) -> builtins.list[FileInfo]:
        d = await self._sbx._client.json(self._call("GET", "/files/list", path, idempotent=True))
        return [FileInfo.from_json(e) for e in d["items"]]

    async def stat(self, path: str) -> FileInfo:
        return FileInfo.from_json(
            await self._sbx._client.json(self._call("GET", "/files/stat", path, idempotent=True))
        )

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except NotFound:
            return False

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        params = {"recursive": "true"} if recursive else {}
        await self._sbx._client.request(self._call("DELETE", "/files", path, params=params))

    async def rename(self, src: str, dst: str) -> None:
        await self._sbx._client.request(
            Call(
                "POST",
                _core.sandbox_path(self._sbx.id, "/files/rename"),
                json={"from": src, "to": dst},
            )
        )

    async def mkdir(self, path: str, *, parents: bool = True) -> None:
        await self._sbx._client.request(
            Call(
                "POST",
                _core.sandbox_path(self._sbx.id, "/files/mkdir"),
                json={"path": path, "parents": parents},
                idempotent=parents,
            )
        )

    async def watch(self, path: str, *, recursive: bool = False) -> AsyncStream[FsEvent]:
        call = self._call(
            "GET",
            "/files/watch",
            path,
            params={"recursive": "true" if recursive else "false"},
            idempotent=True,
        )
        return await AsyncStream.open(self._sbx._client, call, _json_lines(FsEvent.from_json))


class AsyncSandbox:
    """:class:`cove.Sandbox` for ``asyncio``: ``async with await AsyncSandbox.create(…) as
    sbx:``."""

    def __init__(self, info: SandboxInfo, client: AsyncClient, *, keep: bool = False) -> None:
        self.info = info
        self._client = client
        self.keep = keep
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)
        self.pty = AsyncPty(self.commands)

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, state={self.info.state.value!r})"

    @property
    def id(self) -> str:
        return self.info.id

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.keep:
            await self.kill()

    @classmethod
    async def create(
        cls,
        image: str | None = None,
        *,
        template: str | None = None,
        name: str | None = None,
        cpus: int | None = None,
        memory_mib: int | None = None,
        disk_mib: int | None = None,
        env: Mapping[str, str] | None = None,
        ttl: Seconds | None = None,
        on_expire: OnExpire | None = None,
        idle_timeout: Seconds | None = None,
        on_idle: OnIdle | None = None,
        labels: Mapping[str, str] | None = None,
        network: NetworkPolicy | Literal["none", "egress"] | None = None,
        engine: str | None = None,
        keep: bool = False,
        client: AsyncClient | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> AsyncSandbox:
        """See :meth:`cove.Sandbox.create`."""
        c = client or default_client(host, api_key)
        body = _core.create_body(
            image, template, name, cpus, memory_mib, disk_mib, env, ttl, on_expire,
            idle_timeout, on_idle, labels, network, engine,
        )
        d = await c.json(Call("POST", "/v1/sandboxes", json=body))
        return cls(SandboxInfo.from_json(d), c, keep=keep)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        resume: bool = True,
        keep: bool = True,
        client: AsyncClient | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> AsyncSandbox:
        c = client or default_client(host, api_key)
        info = SandboxInfo.from_json(
            await c.json(Call("GET", _core.sandbox_path(sandbox_id), idempotent=True))
        )
        sbx = cls(info, c, keep=keep)
        if resume and info.state in (SandboxState.PAUSED, SandboxState.HIBERNATED):
            await sbx.resume()
        return sbx

    @staticmethod
    async def list(
        *,
        state: SandboxState | str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        client: AsyncClient | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> AsyncIterator[SandboxInfo]:
        """``async for info in AsyncSandbox.list():`` a page at a time."""
        c = client or default_client(host, api_key)
        st = state.value if isinstance(state, SandboxState) else state
        cursor: str | None = None
        while True:
            d = await c.json(
                Call(
                    "GET",
                    "/v1/sandboxes",
                    params=_core.list_params(st, labels, page_size, cursor),
                    idempotent=True,
                )
            )
            for s in d["items"]:
                yield SandboxInfo.from_json(s)
            cursor = d.get("next_cursor")
            if not cursor:
                return

    async def _lifecycle(self, op: str) -> SandboxInfo:
        d = await self._client.json(
            Call("POST", _core.sandbox_path(self.id, f"/{op}"), idempotent=True)
        )
        self.info = SandboxInfo.from_json(d)
        return self.info

    async def refresh(self) -> SandboxInfo:
        d = await self._client.json(Call("GET", _core.sandbox_path(self.id), idempotent=True))
        self.info = SandboxInfo.from_json(d)
        return self.info

    async def pause(self) -> SandboxInfo:
        return await self._lifecycle("pause")

    async def resume(self) -> SandboxInfo:
        return await self._lifecycle("resume")

    async def hibernate(self) -> SandboxInfo:
        return await self._lifecycle("hibernate")

    async def stop(self) -> SandboxInfo:
        return await self._lifecycle("stop")

    async def kill(self) -> None:
        try:
            await self._client.request(
                Call(
                    "DELETE",
                    _core.sandbox_path(self.id),
                    params={"force": "true"},
                    idempotent=True,
                )
            )
        except NotFound:
            pass

    async def snapshot(self, name: str | None = None) -> Snapshot:
        body = {"name": name} if name else {}
        d = await self._client.json(
            Call("POST", _core.sandbox_path(self.id, "/snapshot"), json=body)
        )
        return Snapshot.from_json(d)

    async def fork(self, count: int = 1, *, keep: bool = False) -> builtins.list[AsyncSandbox]:
        d = await self._client.json(
            Call("POST", _core.sandbox_path(self.id, "/fork"), json={"count": count})
        )
        return [AsyncSandbox(SandboxInfo.from_json(s), self._client, keep=keep) for s in d["items"]]

    async def set_network(self, policy: NetworkPolicy) -> SandboxInfo:
        d = await self._client.json(
            Call(
                "PUT",
                _core.sandbox_path(self.id, "/network"),
                json=policy.to_json(),
                idempotent=True,
            )
        )
        self.info = SandboxInfo.from_json(d)
        return self.info

    async def url(self, port: int, *, expires: Seconds | None = None) -> PortUrl:
        d = await self._client.json(
            Call("POST", _core.sandbox_path(self.id, "/urls"), json=_core.url_params(port, expires))
        )
        return PortUrl.from_json(d)

    async def traffic_token(self) -> str:
        d = await self._client.json(
            Call("GET", _core.sandbox_path(self.id, "/traffic-token"), idempotent=True)
        )
        return str(d["token"])

    async def metrics(self) -> Metrics:
        return Metrics.from_json(
            await self._client.json(
                Call("GET", _core.sandbox_path(self.id, "/metrics"), idempotent=True)
            )
        )

    async def processes(self) -> builtins.list[Process]:
        d = await self._client.json(
            Call("GET", _core.sandbox_path(self.id, "/processes"), idempotent=True)
        )
        return [Process.from_json(p) for p in d["items"]]

    async def logs(self) -> str:
        res = await self._client.request(
            Call("GET", _core.sandbox_path(self.id, "/logs"), idempotent=True)
        )
        return res.text

    async def events(self, *, follow: bool = False, after: int | None = None) -> AsyncStream[Event]:
        params = {"sandbox": self.id}
        if follow:
            params["follow"] = "true"
        if after is not None:
            params["after"] = str(after)
        call = Call("GET", "/v1/events", params=params, idempotent=True)
        return await AsyncStream.open(self._client, call, _json_lines(Event.from_json))


__all__ = [
    "AsyncClient",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncOutputStream",
    "AsyncPty",
    "AsyncSandbox",
    "AsyncStream",
    "AsyncIterable",
]
