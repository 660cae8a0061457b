"""What coved answers, as typed values.

Each mirrors a schema of coved's OpenAPI document (``GET /v1/openapi.json``); fields this
version does not know are ignored, so a newer coved does not break an older SDK.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping


def _at(ms: int) -> datetime:
    """Milliseconds since the epoch, as coved sends times."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class _Lenient(str, enum.Enum):
    """An enum that reads a value it does not know (a newer coved's) as its ``UNKNOWN``."""

    @classmethod
    def _missing_(cls, value: object) -> _Lenient:
        return cls["UNKNOWN"]


class SandboxState(_Lenient):
    """Where a sandbox is in its lifecycle (``docs/lifecycle.md``)."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    RESUMING = "resuming"
    STOPPED = "stopped"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"
    #: A state a newer coved knows and this SDK does not.
    UNKNOWN = "unknown"


class EventKind(_Lenient):
    """What an :class:`Event` records: a state entered, the removal, a new network policy."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    RESUMING = "resuming"
    STOPPED = "stopped"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"
    REMOVED = "removed"
    NETWORK = "network"
    UNKNOWN = "unknown"


class ActorKind(_Lenient):
    """Who caused an event."""

    LOCAL = "local"
    KEY = "key"
    TTL = "ttl"
    IDLE_POLICY = "idle-policy"
    RECONCILE = "reconcile"
    TRAFFIC = "traffic"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Actor:
    """Who caused an event: an API key (``key_id``), the host's administrator, the time to
    live, the idle policy, traffic to a port, or the host finding a VM gone."""

    kind: ActorKind
    key_id: str | None = None

    @classmethod
    def parse(cls, s: str) -> Actor:
        if s.startswith("key:"):
            return cls(ActorKind.KEY, s[4:])
        return cls(ActorKind(s))

    def __str__(self) -> str:
        return f"key:{self.key_id}" if self.kind is ActorKind.KEY else self.kind.value


class FsEventKind(_Lenient):
    """What happened to a watched path."""

    CREATE = "create"
    WRITE = "write"
    REMOVE = "remove"
    RENAME = "rename"
    CHMOD = "chmod"
    #: The guest dropped events (its queue overflowed): look again.
    OVERFLOW = "overflow"
    UNKNOWN = "unknown"


class FileKind(str, enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"

    @classmethod
    def _missing_(cls, value: object) -> FileKind:
        return cls.OTHER


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network: ``egress`` (the default: out to anything the operator allows,
    narrowed by ``allow``/``deny``) or ``none``; ``public_ports`` serves its ports to anyone;
    ``egress_mbps`` caps what it sends out, in megabits per second. Entries are IPv4 networks
    (``10.0.0.0/8``), addresses, or domain names (``example.com`` and its subdomains,
    ``*.example.com`` its subdomains only)."""

    mode: str = "egress"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    public_ports: bool = False
    egress_mbps: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NetworkPolicy:
        return cls(
            mode=d.get("mode", "egress"),
            allow=tuple(d.get("allow") or ()),
            deny=tuple(d.get("deny") or ()),
            public_ports=bool(d.get("public_ports", False)),
            egress_mbps=d.get("egress_mbps"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "allow": list(self.allow),
            "deny": list(self.deny),
            "public_ports": self.public_ports,
        }
        if self.egress_mbps is not None:
            out["egress_mbps"] = self.egress_mbps
        return out


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as coved last described it."""

    id: str
    name: str | None
    state: SandboxState
    image: str
    image_digest: str
    cpus: int
    memory_mib: int
    disk_mib: int
    created_at: datetime
    boot_ms: int | None
    #: Why it is in its state, as a sentence (``idle``, ``stopped: its time to live ran out``).
    reason: str | None
    labels: dict[str, str]
    env: dict[str, str]
    network: NetworkPolicy
    #: The host's view (owner, engine, directory), for the host's administrator only.
    host: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SandboxInfo:
        return cls(
            id=d["id"],
            name=d.get("name"),
            state=SandboxState(d["state"]),
            image=d.get("image", ""),
            image_digest=d.get("image_digest", ""),
            cpus=d.get("cpus", 0),
            memory_mib=d.get("memory_mib", 0),
            disk_mib=d.get("disk_mib", 0),
            created_at=_at(d.get("created_at", 0)),
            boot_ms=d.get("boot_ms"),
            reason=d.get("reason"),
            labels=dict(d.get("labels") or {}),
            env=dict(d.get("env") or {}),
            network=NetworkPolicy.from_json(d.get("network") or {}),
            host=d.get("host"),
        )


@dataclass(frozen=True)
class CommandResult:
    """How a command ended, with all it printed."""

    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    #: Its time limit killed it.
    timed_out: bool = False
    pid: int | None = None

    @property
    def stdout(self) -> str:
        """Standard output as text (UTF-8; undecodable bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """Standard error as text (UTF-8; undecodable bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> CommandResult:
        """Itself, or :class:`CommandFailed` when it did not exit 0."""
        if not self.ok:
            raise CommandFailed(self)
        return self


class CommandFailed(Exception):
    """A command exited with a code other than 0 (raised by ``check=True``)."""

    def __init__(self, result: CommandResult) -> None:
        why = "timed out" if result.timed_out else f"exited {result.exit_code}"
        tail = result.stderr.strip()[-500:]
        super().__init__(f"the command {why}" + (f": {tail}" if tail else ""))
        self.result = result


@dataclass(frozen=True)
class CommandInfo:
    """A command that runs in a sandbox (``commands.list()``)."""

    pid: int
    tag: str | None
    cmd: list[str]
    env: dict[str, str]
    cwd: str
    tty: bool
    stdin: bool
    #: It outlives the connection that started it.
    keep: bool
    started_at: datetime

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CommandInfo:
        return cls(
            pid=d["pid"],
            tag=d.get("tag"),
            cmd=list(d.get("cmd") or ()),
            env=dict(d.get("env") or {}),
            cwd=d.get("cwd", ""),
            tty=bool(d.get("tty")),
            stdin=bool(d.get("stdin")),
            keep=bool(d.get("keep")),
            started_at=_at(d.get("started_at", 0)),
        )


@dataclass(frozen=True)
class FileInfo:
    """A file's metadata (``files.stat``, and each entry of ``files.list``)."""

    #: The path for ``stat``; the entry's name for ``list``.
    name: str
    kind: FileKind
    size: int
    mode: int
    uid: int
    gid: int
    mtime: datetime
    link_target: str | None = None
    owner: str | None = None
    group: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind is FileKind.DIR

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileInfo:
        return cls(
            name=d.get("path") or d.get("name", ""),
            kind=FileKind(d.get("kind", "other")),
            size=d.get("size", 0),
            mode=d.get("mode", 0),
            uid=d.get("uid", 0),
            gid=d.get("gid", 0),
            mtime=datetime.fromtimestamp(d.get("mtime", 0), tz=timezone.utc),
            link_target=d.get("link_target"),
            owner=d.get("owner"),
            group=d.get("group"),
        )


@dataclass(frozen=True)
class FsEvent:
    """A change under a watched directory (``name`` is relative to it)."""

    name: str
    kind: FsEventKind
    dir: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FsEvent:
        return cls(d["name"], FsEventKind(d["kind"]), bool(d.get("dir", False)))


@dataclass(frozen=True)
class Event:
    """A lifecycle event: what a sandbox entered, who caused it and why."""

    seq: int
    at: datetime
    sandbox: str
    kind: EventKind
    actor: Actor
    cause: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        return cls(
            seq=d["seq"],
            at=_at(d["at"]),
            sandbox=d["sandbox"],
            kind=EventKind(d["state"]),
            actor=Actor.parse(d["actor"]),
            cause=d.get("cause"),
        )


@dataclass(frozen=True)
class Metrics:
    """A sandbox's use of the host, measured there."""

    cpu_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Metrics:
        return cls(
            cpu_seconds=float(d["cpu_seconds"]),
            memory_bytes=d["memory_bytes"],
            memory_limit_bytes=d["memory_limit_bytes"],
            disk_bytes=d["disk_bytes"],
            disk_limit_bytes=d["disk_limit_bytes"],
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot (or a template): memory and disk, restorable as a new sandbox."""

    id: str
    name: str | None
    sandbox: str | None
    image: str
    cpus: int
    memory_mib: int
    disk_mib: int
    created_at: datetime
    template: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=d["id"],
            name=d.get("name"),
            sandbox=d.get("sandbox"),
            image=d.get("image", ""),
            cpus=d.get("cpus", 0),
            memory_mib=d.get("memory_mib", 0),
            disk_mib=d.get("disk_mib", 0),
            created_at=_at(d.get("created_at", 0)),
            template=bool(d.get("template", False)),
        )


@dataclass(frozen=True)
class Process:
    """A process of the guest (every one, not only commands'), from its ``/proc``."""

    pid: int
    ppid: int
    uid: int
    state: str
    rss_bytes: int
    cpu_ms: int
    cmdline: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Process:
        return cls(
            pid=d["pid"],
            ppid=d["ppid"],
            uid=d["uid"],
            state=d["state"],
            rss_bytes=d["rss_bytes"],
            cpu_ms=d["cpu_ms"],
            cmdline=list(d.get("cmdline") or ()),
        )


@dataclass(frozen=True)
class PortUrl:
    """A signed URL to a sandbox's port: anyone with it reaches the port until it expires."""

    url: str
    expires_at: datetime

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PortUrl:
        return cls(d["url"], _at(d["expires_at"]))
