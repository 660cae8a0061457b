"""Sandboxes, synchronously: :class:`Sandbox` and what hangs off it (``commands``, ``files``,
``pty``). :mod:`cove.aio` has the same with ``async``."""

from __future__ import annotations

import builtins
import json
import os
import threading
from contextlib import ExitStack
from typing import (
    Any,
    Callable,
    ContextManager,
    Generic,
    Iterator,
    Literal,
    Mapping,
    Sequence,
    TypeVar,
    overload,
)

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from . import _core
from ._client import Client
from ._core import Call, Collected, Exited, OnExpire, OnIdle, Output, Seconds, Started
from ._stdin import Data, chunks
from .errors import BadRequest, ConnectionFailed, NotFound
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
OnData = Callable[[bytes], None]

_clients: dict[tuple[Any, ...], Client] = {}
_clients_lock = threading.Lock()


def default_client(host: str | None = None, api_key: str | None = None) -> Client:
    """The client for ``host`` and ``api_key`` (or the environment's), made once per process
    and shared: one connection pool for every sandbox."""
    k = (host, api_key, os.environ.get("COVE_HOST"), os.environ.get("COVE_API_KEY"))
    with _clients_lock:
        c = _clients.get(k)
        if c is None:
            c = _clients[k] = Client(host, api_key)
        return c


class Stream(Generic[T]):
    """Items as coved sends them (JSON lines, log text), until it ends or :meth:`close`; use it
    in a ``with`` block or close it to let the connection go."""

    def __init__(
        self, client: Client, call: Call, parse: Callable[[httpx.Response], Iterator[T]]
    ) -> None:
        self._stack = ExitStack()
        res = self._stack.enter_context(client.stream(call))
        self._items = parse(res)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._items)
        except httpx.HTTPError as e:
            self.close()
            raise ConnectionFailed(f"the stream from coved broke: {e}") from e
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_lines(parse: Callable[[Any], T]) -> Callable[[httpx.Response], Iterator[T]]:
    def go(res: httpx.Response) -> Iterator[T]:
        for line in res.iter_lines():
            if line.strip():
                yield parse(json.loads(line))

    return go


def _recv(ws: ClientConnection) -> _core.ExecMessage | None | Literal[False]:
    """The next exec message; ``False`` once the socket closed."""
    try:
        return _core.decode(ws.recv())
    except ConnectionClosed:
        return False


def _started(ws: ClientConnection) -> int:
    """Waits for ``started``: the command's pid (the errors a start can meet raised)."""
    while True:
        m = _recv(ws)
        if m is False:
            raise ConnectionFailed("coved closed the exec stream before the command started")
        if isinstance(m, Started):
            return m.pid
        if isinstance(m, Exited):
            raise ConnectionFailed("the command ended before it started")


def _pump(
    ws: ClientConnection,
    got: Collected,
    on_stdout: OnData | None,
    on_stderr: OnData | None,
    collect: bool = True,
) -> None:
    """Reads output until the exit, handing it to the callbacks and keeping it in ``got``."""
    while True:
        m = _recv(ws)
        if m is False:
            if got.exited is None:
                raise ConnectionFailed("the exec stream ended before the command did")
            return
        if isinstance(m, Output):
            if m.stream == "stdout":
                if collect:
                    got.stdout += m.data
                if on_stdout:
                    on_stdout(m.data)
            else:
                if collect:
                    got.stderr += m.data
                if on_stderr:
                    on_stderr(m.data)
        elif isinstance(m, Exited):
            got.exited = m
            ws.close()
            return


#: The most stdin one request carries (coved takes a request body whole).
STDIN_PIECE = 1 << 20


def _feed(commands: Commands, pid: int, data: Data) -> None:
    """Sends ``data`` as the command's stdin, then its end, from a thread of its own while
    output is read. It goes as requests of its own (``/commands/PID/stdin``), not over the exec
    socket: websockets' sync client holds one lock while a send blocks and while it takes in
    what arrives, so a command that echoes its input (``cat``) would stall both once the
    socket's buffers filled."""
    try:
        buf = bytearray()
        for b in chunks(data):
            buf += b
            if len(buf) >= STDIN_PIECE:
                commands.send_stdin(pid, bytes(buf))
                buf.clear()
        commands.send_stdin(pid, bytes(buf), eof=True)
    except (NotFound, BadRequest):
        pass  # the command ended first, or closed its stdin


def _result(got: Collected) -> CommandResult:
    ex = got.exited or Exited(-1, False)
    return CommandResult(ex.exit_code, bytes(got.stdout), bytes(got.stderr), ex.timed_out, got.pid)


class CommandHandle:
    """A command running in the background: its output is read (into the callbacks, and kept
    for :meth:`wait`) while the caller goes on. Dropping the handle or :meth:`disconnect`
    leaves the command running; :meth:`kill` ends it."""

    def __init__(
        self,
        commands: Commands,
        ws: ClientConnection,
        pid: int,
        on_stdout: OnData | None,
        on_stderr: OnData | None,
    ) -> None:
        self._commands = commands
        self._ws = ws
        self.pid = pid
        self._got = Collected(pid=pid)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(on_stdout, on_stderr), daemon=True, name=f"cove-cmd-{pid}"
        )
        self._thread.start()

    def _run(self, on_stdout: OnData | None, on_stderr: OnData | None) -> None:
        try:
            _pump(self._ws, self._got, on_stdout, on_stderr)
        except BaseException as e:  # handed to wait()
            self._error = e

    @property
    def exit_code(self) -> int | None:
        """None while it runs."""
        return self._got.exited.exit_code if self._got.exited else None

    @property
    def stdout(self) -> str:
        """What it printed so far."""
        return bytes(self._got.stdout).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._got.stderr).decode("utf-8", "replace")

    def wait(self, timeout: float | None = None, *, check: bool = False) -> CommandResult:
        """Waits for the end: its exit code and all its output. Raises ``TimeoutError`` when
        ``timeout`` seconds pass first (the command goes on)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"command {self.pid} still runs")
        if self._error is not None:
            raise self._error
        r = _result(self._got)
        return r.check() if check else r

    def send_stdin(self, data: bytes | str) -> None:
        """Writes to its stdin (it must have been started with ``stdin=True``)."""
        self._commands.send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        self._commands.send_stdin(self.pid, b"", eof=True)

    def resize(self, rows: int, cols: int) -> None:
        """Its terminal's new size (a PTY)."""
        self._commands._resize(self.pid, rows, cols)

    def kill(self, signal: int = 9) -> None:
        """Sends ``signal`` (SIGKILL by default) to its process group."""
        self._commands.kill(self.pid, signal)

    def disconnect(self) -> None:
        """Stops following it; it runs on (``commands.connect(pid)`` finds it again)."""
        self._ws.close()
        self._thread.join(10)


class OutputStream:
    """A command's output as an iterator of :class:`~cove.Output`, in order; once it is
    exhausted, :attr:`result` says how the command ended."""

    def __init__(self, ws: ClientConnection, pid: int, feeder: threading.Thread | None) -> None:
        self._ws = ws
        self.pid = pid
        self._got = Collected(pid=pid)
        self._feeder = feeder
        self.result: CommandResult | None = None

    def __iter__(self) -> Iterator[Output]:
        while self.result is None:
            m = _recv(self._ws)
            if m is False:
                raise ConnectionFailed("the exec stream ended before the command did")
            if isinstance(m, Output):
                yield m
            elif isinstance(m, Exited):
                self._got.exited = m
                self.result = _result(self._got)
                self._ws.close()

    def close(self) -> None:
        """Ends the command if it still runs (closing its stream kills it)."""
        self._ws.close()
        if self._feeder:
            self._feeder.join(10)

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Commands:
    """Running commands in a sandbox (``sandbox.commands``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sbx = sandbox

    def _open(
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
        ws = self._sbx._client.websocket(_core.sandbox_path(self._sbx.id, "/exec/ws"))
        try:
            ws.send(_core.exec_start(cmd, env, cwd, user, timeout, stdin, tty, tag, keep))
            return ws, _started(ws)
        except BaseException:
            ws.close()
            raise

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: Data | None = ...,
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
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: Data | bool | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | None = ...,
        timeout: Seconds | None = ...,
        on_stdout: OnData | None = ...,
        on_stderr: OnData | None = ...,
        background: Literal[True],
        tag: str | None = ...,
        check: bool = ...,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: Data | bool | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Seconds | None = None,
        on_stdout: OnData | None = None,
        on_stderr: OnData | None = None,
        background: bool = False,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult | CommandHandle:
        """Runs ``cmd`` (a string through ``/bin/sh -c``, or a list: the program and its
        arguments) and returns how it ended with all it printed; ``on_stdout``/``on_stderr``
        get output as it arrives. ``stdin``: bytes, text, a binary file or an iterable of bytes,
        streamed while output is read. ``timeout`` (seconds) kills it when it runs longer
        (``timed_out`` in the result). ``check=True`` raises :class:`~cove.CommandFailed` for
        an exit other than 0.

        With ``background=True`` it returns at once with a :class:`CommandHandle`; the command
        outlives the handle and this process (found again with :meth:`list` and
        :meth:`connect`, by pid or ``tag``). ``stdin=True`` keeps its stdin open for
        :meth:`CommandHandle.send_stdin`."""
        argv = _core.argv(cmd)
        feed = stdin if stdin is not None and stdin is not True and stdin is not False else None
        wants_stdin = stdin is not None and stdin is not False
        if background:
            ws, pid = self._open(argv, env, cwd, user, timeout, wants_stdin, None, tag, True)
            h = CommandHandle(self, ws, pid, on_stdout, on_stderr)
            if feed is not None:
                _feed(self, pid, feed)
            return h
        if tag is not None:
            raise ValueError("tag names a background command: pass background=True")
        ws, pid = self._open(argv, env, cwd, user, timeout, wants_stdin)
        got = Collected(pid=pid)
        feeder = None
        try:
            if feed is not None:
                feeder = threading.Thread(target=_feed, args=(self, pid, feed), daemon=True)
                feeder.start()
            _pump(ws, got, on_stdout, on_stderr)
        finally:
            ws.close()
            if feeder:
                feeder.join(10)
        r = _result(got)
        return r.check() if check else r

    def stream(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: Data | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Seconds | None = None,
    ) -> OutputStream:
        """Runs ``cmd`` and returns its output as an iterator (``for out in stream:``
        ``out.stream``, ``out.data``); ``stream.result`` once it is exhausted. Closing it early
        ends the command."""
        ws, pid = self._open(_core.argv(cmd), env, cwd, user, timeout, stdin is not None)
        feeder = None
        if stdin is not None:
            feeder = threading.Thread(target=_feed, args=(self, pid, stdin), daemon=True)
            feeder.start()
        return OutputStream(ws, pid, feeder)

    def list(self) -> builtins.list[CommandInfo]:
        """The commands that run now (started by any client)."""
        d = self._sbx._client.json(
            Call("GET", _core.sandbox_path(self._sbx.id, "/commands"), idempotent=True)
        )
        return [CommandInfo.from_json(c) for c in d["items"]]

    def connect(
        self,
        command: int | str,
        *,
        on_stdout: OnData | None = None,
        on_stderr: OnData | None = None,
    ) -> CommandHandle:
        """Follows a running command (pid or tag) from now on."""
        path = _core.command_path(self._sbx.id, command, "/ws")
        ws = self._sbx._client.websocket(path)
        try:
            pid = _started(ws)
        except BaseException:
            ws.close()
            raise
        return CommandHandle(self, ws, pid, on_stdout, on_stderr)

    def kill(self, command: int | str, signal: int = 9) -> None:
        """Sends ``signal`` (SIGKILL by default) to a running command's process group."""
        self._sbx._client.request(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/signal"),
                json={"signal": int(signal)},
            )
        )

    def send_stdin(self, command: int | str, data: bytes | str, *, eof: bool = False) -> None:
        """Writes to a running command's stdin (``eof=True`` closes it after)."""
        body = data.encode() if isinstance(data, str) else data
        self._sbx._client.upload(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/stdin"),
                params={"eof": "true"} if eof else None,
            ),
            body,
        )

    def _resize(self, command: int | str, rows: int, cols: int) -> None:
        self._sbx._client.request(
            Call(
                "POST",
                _core.command_path(self._sbx.id, command, "/resize"),
                json={"rows": rows, "cols": cols},
                idempotent=True,
            )
        )


class Pty:
    """Interactive terminals (``sandbox.pty``)."""

    def __init__(self, commands: Commands) -> None:
        self._commands = commands

    def create(
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
    ) -> CommandHandle:
        """Starts ``cmd`` (a login shell by default) on a terminal of ``rows`` × ``cols``;
        what it writes reaches ``on_data``; type with ``send_stdin``, resize with ``resize``.
        It runs on after the handle goes, as a background command."""
        argv = _core.LOGIN_SHELL if cmd is None else _core.argv(cmd)
        e = {"TERM": "xterm-256color", **(env or {})}
        ws, pid = self._commands._open(argv, e, cwd, user, timeout, True, (rows, cols), tag, True)
        return CommandHandle(self._commands, ws, pid, on_data, None)


class Files:
    """The sandbox's files (``sandbox.files``): paths are absolute in the guest."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sbx = sandbox

    def _call(self, method: str, rest: str, path: str, **kw: Any) -> Call:
        params = {"path": path, **kw.pop("params", {})}
        return Call(method, _core.sandbox_path(self._sbx.id, rest), params=params, **kw)

    def read(self, path: str) -> bytes:
        """The whole file (see :meth:`read_stream` for large ones)."""
        with self.read_stream(path) as chunks_:
            return b"".join(chunks_)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def read_stream(self, path: str, chunk_size: int = 256 << 10) -> Stream[bytes]:
        """The file in pieces as they arrive, never whole in memory."""

        def parse(res: httpx.Response) -> Iterator[bytes]:
            yield from res.iter_bytes(chunk_size)

        return Stream(self._sbx._client, self._call("GET", "/files", path, idempotent=True), parse)

    def download(self, path: str, local_path: str | os.PathLike[str]) -> int:
        """Copies the file to ``local_path``; the bytes copied."""
        n = 0
        with open(local_path, "wb") as f, self.read_stream(path) as s:
            for b in s:
                f.write(b)
                n += len(b)
        return n

    def write(self, path: str, data: Data, *, mode: int | None = None) -> int:
        """Replaces (or makes) the file with ``data`` — bytes, text, a binary file or an
        iterable of bytes, streamed — atomically, making its parents; the bytes written.
        ``mode``: its permission bits (``0o755``)."""
        call = self._call("PUT", "/files", path, params=_core.mode_param(mode))
        w = _core.whole(data)
        res = self._sbx._client.upload(call, w if w is not None else chunks(data))
        return int(res.json()["bytes"])

    def upload(
        self, local_path: str | os.PathLike[str], path: str, *, mode: int | None = None
    ) -> int:
        with open(local_path, "rb") as f:
            return self.write(path, f, mode=mode)

    def list(self, path: str) -> builtins.list[FileInfo]:
        """A directory's entries, sorted by name."""
        d = self._sbx._client.json(self._call("GET", "/files/list", path, idempotent=True))
        return [FileInfo.from_json(e) for e in d["items"]]

    def stat(self, path: str) -> FileInfo:
        return FileInfo.from_json(
            self._sbx._client.json(self._call("GET", "/files/stat", path, idempotent=True))
        )

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    def remove(self, path: str, *, recursive: bool = False) -> None:
        params = {"recursive": "true"} if recursive else {}
        self._sbx._client.request(self._call("DELETE", "/files", path, params=params))

    def rename(self, src: str, dst: str) -> None:
        self._sbx._client.request(
            Call(
                "POST",
                _core.sandbox_path(self._sbx.id, "/files/rename"),
                json={"from": src, "to": dst},
            )
        )

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        self._sbx._client.request(
            Call(
                "POST",
                _core.sandbox_path(self._sbx.id, "/files/mkdir"),
                json={"path": path, "parents": parents},
                idempotent=parents,
            )
        )

    def watch(self, path: str, *, recursive: bool = False) -> Stream[FsEvent]:
        """Changes under the directory ``path`` as they happen, until closed (or the directory
        goes)."""
        call = self._call(
            "GET",
            "/files/watch",
            path,
            params={"recursive": "true" if recursive else "false"},
            idempotent=True,
        )
        return Stream(self._sbx._client, call, _json_lines(FsEvent.from_json))


class Sandbox:
    """A sandbox: a microVM with its own kernel, memory and disk.

    ``with Sandbox.create(image="python") as sbx:`` removes it on leaving the block (unless
    ``keep=True``)."""

    def __init__(self, info: SandboxInfo, client: Client, *, keep: bool = False) -> None:
        self.info = info
        self._client = client
        self.keep = keep
        self.commands = Commands(self)
        self.files = Files(self)
        self.pty = Pty(self.commands)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.info.state.value!r})"

    @property
    def id(self) -> str:
        return self.info.id

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            self.kill()

    # --- making and finding sandboxes -------------------------------------------------------

    @classmethod
    def create(
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
        client: Client | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> Sandbox:
        """Creates a sandbox from ``image`` (an installed image's name; the host's default
        when neither it nor ``template`` is given) or ``template`` (a snapshot's id or name,
        restored with its memory), running when this returns. ``ttl``: seconds (or a
        ``timedelta``) it may live, then ``on_expire`` (``stop`` or ``hibernate``);
        ``idle_timeout``: seconds without a command, a file request or traffic before
        ``on_idle`` (``pause``, or ``hibernate``: no memory held) puts it away — a request
        wakes it. ``network``: ``"none"``, or a :class:`NetworkPolicy` with ``allow``/``deny``
        lists."""
        c = client or default_client(host, api_key)
        body = _core.create_body(
            image, template, name, cpus, memory_mib, disk_mib, env, ttl, on_expire,
            idle_timeout, on_idle, labels, network, engine,
        )
        d = c.json(Call("POST", "/v1/sandboxes", json=body))
        return cls(SandboxInfo.from_json(d), c, keep=keep)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        resume: bool = True,
        keep: bool = True,
        client: Client | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> Sandbox:
        """The sandbox ``sandbox_id`` (an id or a name); a paused or hibernated one is resumed
        unless ``resume=False``. Kept on leaving a ``with`` block unless ``keep=False``."""
        c = client or default_client(host, api_key)
        info = SandboxInfo.from_json(
            c.json(Call("GET", _core.sandbox_path(sandbox_id), idempotent=True))
        )
        sbx = cls(info, c, keep=keep)
        if resume and info.state in (SandboxState.PAUSED, SandboxState.HIBERNATED):
            sbx.resume()
        return sbx

    @staticmethod
    def list(
        *,
        state: SandboxState | str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        client: Client | None = None,
        host: str | None = None,
        api_key: str | None = None,
    ) -> Iterator[SandboxInfo]:
        """The tenant's sandboxes, oldest first, fetched a page at a time as it is iterated;
        ``state`` and ``labels`` (all must match) filter."""
        c = client or default_client(host, api_key)
        st = state.value if isinstance(state, SandboxState) else state
        cursor: str | None = None
        while True:
            d = c.json(
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

    # --- its lifecycle ------------------------------------------------------------------------

    def _lifecycle(self, op: str) -> SandboxInfo:
        d = self._client.json(Call("POST", _core.sandbox_path(self.id, f"/{op}"), idempotent=True))
        self.info = SandboxInfo.from_json(d)
        return self.info

    def refresh(self) -> SandboxInfo:
        """Asks coved again: its state now."""
        d = self._client.json(Call("GET", _core.sandbox_path(self.id), idempotent=True))
        self.info = SandboxInfo.from_json(d)
        return self.info

    def pause(self) -> SandboxInfo:
        """Freezes its vCPUs; memory stays resident; :meth:`resume` is instant."""
        return self._lifecycle("pause")

    def resume(self) -> SandboxInfo:
        """Runs a paused or hibernated sandbox again, where it left off."""
        return self._lifecycle("resume")

    def hibernate(self) -> SandboxInfo:
        """Saves memory and disk and ends its VM: no host memory held; :meth:`resume` restores
        it, on this host or (with shared storage) another."""
        return self._lifecycle("hibernate")

    def stop(self) -> SandboxInfo:
        """Ends its VM; its disk stays until :meth:`kill`."""
        return self._lifecycle("stop")

    def kill(self) -> None:
        """Removes it (stopping it first): its VM, memory and disk go. Removing one that is
        already gone is not an error."""
        try:
            self._client.request(
                Call(
                    "DELETE",
                    _core.sandbox_path(self.id),
                    params={"force": "true"},
                    idempotent=True,
                )
            )
        except NotFound:
            pass

    def snapshot(self, name: str | None = None) -> Snapshot:
        """Saves its memory and disk as a snapshot (it runs on); ``template=`` of
        :meth:`create` restores it, as often as wanted."""
        body = {"name": name} if name else {}
        d = self._client.json(Call("POST", _core.sandbox_path(self.id, "/snapshot"), json=body))
        return Snapshot.from_json(d)

    def fork(self, count: int = 1, *, keep: bool = False) -> builtins.list[Sandbox]:
        """``count`` copies of it as it is now, memory and all, each running on its own."""
        d = self._client.json(
            Call("POST", _core.sandbox_path(self.id, "/fork"), json={"count": count})
        )
        return [Sandbox(SandboxInfo.from_json(s), self._client, keep=keep) for s in d["items"]]

    def set_network(self, policy: NetworkPolicy) -> SandboxInfo:
        """Replaces its network policy while it runs."""
        d = self._client.json(
            Call(
                "PUT",
                _core.sandbox_path(self.id, "/network"),
                json=policy.to_json(),
                idempotent=True,
            )
        )
        self.info = SandboxInfo.from_json(d)
        return self.info

    # --- reaching it --------------------------------------------------------------------------

    def url(self, port: int, *, expires: Seconds | None = None) -> PortUrl:
        """A signed URL to its ``port`` that anyone holding it can use until it expires
        (``expires`` seconds; coved's default is an hour)."""
        d = self._client.json(
            Call("POST", _core.sandbox_path(self.id, "/urls"), json=_core.url_params(port, expires))
        )
        return PortUrl.from_json(d)

    def traffic_token(self) -> str:
        """The token (``X-Cove-Traffic-Token``) that reaches its ports."""
        d = self._client.json(
            Call("GET", _core.sandbox_path(self.id, "/traffic-token"), idempotent=True)
        )
        return str(d["token"])

    # --- watching it --------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        return Metrics.from_json(
            self._client.json(Call("GET", _core.sandbox_path(self.id, "/metrics"), idempotent=True))
        )

    def processes(self) -> builtins.list[Process]:
        """Every process of the guest."""
        d = self._client.json(
            Call("GET", _core.sandbox_path(self.id, "/processes"), idempotent=True)
        )
        return [Process.from_json(p) for p in d["items"]]

    def logs(self) -> str:
        """Its console: what the guest's kernel and init printed."""
        return self._client.request(
            Call("GET", _core.sandbox_path(self.id, "/logs"), idempotent=True)
        ).text

    def events(self, *, follow: bool = False, after: int | None = None) -> Stream[Event]:
        """Its lifecycle events, oldest first (``after`` a sequence number); with
        ``follow=True`` new ones as they are recorded, until closed."""
        params = {"sandbox": self.id}
        if follow:
            params["follow"] = "true"
        if after is not None:
            params["after"] = str(after)
        call = Call("GET", "/v1/events", params=params, idempotent=True)
        return Stream(self._client, call, _json_lines(Event.from_json))


# What `with` gives for typing: a Sandbox is its own context manager.
_: type[ContextManager[Sandbox]] = Sandbox
