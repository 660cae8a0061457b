"""Cove's Python SDK: sandboxes (KVM microVMs) over Cove's own API.

```python
from cove import Sandbox

with Sandbox.create(image="python") as sbx:
    print(sbx.commands.run("python3 -c 'print(6*7)'").stdout)  # 42
```

``cove.aio`` has the same with ``async``/``await``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._client import Client
from ._core import Output
from .aio import AsyncClient, AsyncCommandHandle, AsyncSandbox
from .errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    CoveError,
    Forbidden,
    NoSpace,
    NotFound,
    PortClosed,
    ProgramNotFound,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from .models import (
    Actor,
    ActorKind,
    CommandFailed,
    CommandInfo,
    CommandResult,
    Event,
    EventKind,
    FileInfo,
    FileKind,
    FsEvent,
    FsEventKind,
    Metrics,
    NetworkPolicy,
    PortUrl,
    Process,
    SandboxInfo,
    SandboxState,
    Snapshot,
)
from .sandbox import CommandHandle, OutputStream, Sandbox, Stream

__all__ = [
    "Actor",
    "ActorKind",
    "ApiError",
    "AsyncClient",
    "AsyncCommandHandle",
    "AsyncSandbox",
    "BadRequest",
    "Client",
    "CommandFailed",
    "CommandHandle",
    "CommandInfo",
    "CommandResult",
    "Conflict",
    "ConnectionFailed",
    "CoveError",
    "Event",
    "EventKind",
    "FileInfo",
    "FileKind",
    "Forbidden",
    "FsEvent",
    "FsEventKind",
    "Metrics",
    "NetworkPolicy",
    "NoSpace",
    "NotFound",
    "Output",
    "OutputStream",
    "PortClosed",
    "PortUrl",
    "Process",
    "ProgramNotFound",
    "QuotaExceeded",
    "RateLimited",
    "Sandbox",
    "SandboxInfo",
    "SandboxState",
    "Snapshot",
    "Stream",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "__version__",
]
