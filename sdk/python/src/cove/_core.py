"""What the sync and async clients share: the requests each method makes, how answers are read,
the retry rule, and the streaming exec's messages. The two clients only carry these out, so a
rule lives here once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Mapping, Sequence, Union
from urllib.parse import quote

from .errors import ConnectionFailed, api_error
from .models import NetworkPolicy

Seconds = Union[int, float, timedelta]
OnIdle = Literal["pause", "hibernate"]
OnExpire = Literal["stop", "hibernate"]

#: Statuses worth another try for a request that may be repeated: coved's rate limit and a
#: sandbox or host briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503})
RETRIES = 3


def seconds(v: Seconds) -> float:
    return v.total_seconds() if isinstance(v, timedelta) else float(v)


def seg(s: str) -> str:
    """One path segment (a ``tenant/name`` stays one)."""
    return quote(s, safe="-_.~")


def sandbox_path(sid: str, rest: str = "") -> str:
    return f"/v1/sandboxes/{seg(sid)}{rest}"


def command_path(sid: str, command: int | str, rest: str) -> str:
    """A running command's route (``rest``: ``/ws``, ``/stdin``, ``/signal``, ``/resize``)."""
    return sandbox_path(sid, f"/commands/{seg(str(command))}{rest}")


@dataclass
class Call:
    """One HTTP request of the API."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: Any = None
    #: May be sent again: a read, or a change that lands once however often it is sent.
    idempotent: bool = False


def should_retry(call: Call, status: int | None, attempt: int, code: str | None = None) -> bool:
    """Whether to send ``call`` again after ``attempt`` tries: ``status`` None means the request
    never reached coved (the connection was refused), which any request may retry. A quota is
    never retried: it will not change by waiting a moment."""
    if attempt >= RETRIES:
        return False
    if status is None:
        return True
    return call.idempotent and status in RETRY_STATUSES and code != "quota_exceeded"


def backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            wait = float(retry_after)
            return min(wait, 10.0)
        except ValueError:
            pass
    return 0.2 * 2.0 ** (attempt - 1)


def create_body(
    image: str | None,
    template: str | None,
    name: str | None,
    cpus: int | None,
    memory_mib: int | None,
    disk_mib: int | None,
    env: Mapping[str, str] | None,
    ttl: Seconds | None,
    on_expire: OnExpire | None,
    idle_timeout: Seconds | None,
    on_idle: OnIdle | None,
    labels: Mapping[str, str] | None,
    network: NetworkPolicy | Literal["none", "egress"] | None,
    engine: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if template is not None:
        body["snapshot"] = template
    if name is not None:
        body["name"] = name
    if cpus is not None:
        body["cpus"] = cpus
    if memory_mib is not None:
        body["memory_mib"] = memory_mib
    if disk_mib is not None:
        body["disk_mib"] = disk_mib
    if env:
        body["env"] = dict(env)
    if ttl is not None:
        body["ttl_secs"] = max(1, round(seconds(ttl)))
    if on_expire is not None:
        body["on_expire"] = on_expire
    if idle_timeout is not None:
        body["idle_timeout_secs"] = max(1, round(seconds(idle_timeout)))
    if on_idle is not None:
        body["on_idle"] = on_idle
    if labels:
        body["labels"] = dict(labels)
    if isinstance(network, str):
        body["network"] = {"mode": network}
    elif network is not None:
        body["network"] = network.to_json()
    if engine is not None:
        body["engine"] = engine
    return body


def list_params(
    state: str | None, labels: Mapping[str, str] | None, limit: int, cursor: str | None
) -> dict[str, str]:
    p = {"limit": str(limit)}
    if state:
        p["state"] = state
    if labels:
        p["label"] = ",".join(f"{k}={v}" for k, v in labels.items())
    if cursor:
        p["cursor"] = cursor
    return p


def argv(cmd: str | Sequence[str]) -> list[str]:
    """A command line: a string runs through ``/bin/sh -c`` (pipes, globs, ``&&``), a list is
    the program and its arguments as they are."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    out = list(cmd)
    if not out:
        raise ValueError("an empty command")
    return out


#: A login shell where the image has one: what ``pty.create`` runs by default.
LOGIN_SHELL = [
    "/bin/sh",
    "-c",
    'if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi',
]


def exec_start(
    cmd: list[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    timeout: Seconds | None = None,
    stdin: bool = False,
    tty: tuple[int, int] | None = None,
    tag: str | None = None,
    keep: bool = False,
) -> str:
    """The streaming exec's first message (``ExecStart``)."""
    m: dict[str, Any] = {"cmd": cmd, "stdin": stdin, "keep": keep}
    if env:
        m["env"] = dict(env)
    if cwd is not None:
        m["cwd"] = cwd
    if user is not None:
        m["user"] = user
    if timeout is not None:
        m["timeout_secs"] = seconds(timeout)
    if tty is not None:
        m["tty"] = {"rows": tty[0], "cols": tty[1]}
    if tag is not None:
        m["tag"] = tag
    return json.dumps(m)


EOF_MSG = json.dumps({"type": "eof"})


def resize_msg(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def signal_msg(signal: int) -> str:
    return json.dumps({"type": "signal", "signal": int(signal)})


@dataclass(frozen=True)
class Output:
    """A piece of a command's output, in the order the guest wrote it per stream."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Started:
    pid: int


@dataclass(frozen=True)
class Exited:
    exit_code: int
    timed_out: bool


ExecMessage = Union[Started, Output, Exited]


def decode(msg: str | bytes) -> ExecMessage | None:
    """One message of the streaming exec; raises the API error it carries."""
    if isinstance(msg, bytes):
        if not msg:
            return None
        return Output("stderr" if msg[0] == 2 else "stdout", msg[1:])
    try:
        ev = json.loads(msg)
    except ValueError as e:
        raise ConnectionFailed(f"unexpected message from coved: {msg[:200]!r}") from e
    t = ev.get("type")
    if t == "started":
        return Started(int(ev["pid"]))
    if t == "exit":
        return Exited(int(ev["exit_code"]), bool(ev.get("timed_out", False)))
    if t == "error":
        raise api_error(422, ev)
    return None


@dataclass
class Collected:
    """What a command printed so far, and how it ended."""

    pid: int | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exited: Exited | None = None


def stdin_chunks(data: bytes | str, size: int = 256 << 10) -> list[bytes]:
    b = data.encode() if isinstance(data, str) else data
    return [b[i : i + size] for i in range(0, len(b), size)]


def whole(data: object) -> bytes | None:
    """Content given whole (sent with its length, so a refusal is read, not a broken upload);
    None for a stream."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return None


def url_params(port: int, expires: Seconds | None) -> dict[str, Any]:
    body: dict[str, Any] = {"port": port}
    if expires is not None:
        body["expires_secs"] = max(1, round(seconds(expires)))
    return body


def mode_param(mode: int | None) -> dict[str, str]:
    return {} if mode is None else {"mode": format(mode, "o")}
