"""Where coved is and how to reach it: arguments first, then the environment the ``cove`` CLI
reads (``COVE_HOST``, ``COVE_API_KEY``, ``COVE_CA_CERT``), then the local coved's Unix socket."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ConnectionFailed

#: How long a request may take by default: creates and resumes boot or restore a VM.
DEFAULT_TIMEOUT = 300.0


def default_home() -> Path:
    """The Cove home the CLI uses: ``COVE_HOME``, else ``/var/lib/cove`` for root, else
    ``$XDG_DATA_HOME/cove`` or ``~/.local/share/cove``."""
    if h := os.environ.get("COVE_HOME"):
        return Path(h)
    if os.geteuid() == 0:
        return Path("/var/lib/cove")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "cove"


@dataclass(frozen=True)
class Config:
    """A resolved connection: an HTTP(S) base URL or a Unix socket, and the key."""

    #: ``http://host:port`` or ``https://…``; ``http://localhost`` for a Unix socket.
    base_url: str
    #: coved's Unix socket, when it is reached through one.
    uds: str | None
    api_key: str | None
    #: A PEM file of CA certificates to trust besides the system's.
    ca_cert: str | None
    timeout: float
    #: No host was named: the local coved of this machine's Cove home, started when none
    #: answers (as the CLI does).
    local: bool = False

    @classmethod
    def resolve(
        cls,
        host: str | None = None,
        api_key: str | None = None,
        ca_cert: str | None = None,
        timeout: float | None = None,
    ) -> Config:
        host = host or os.environ.get("COVE_HOST") or None
        key = api_key if api_key is not None else os.environ.get("COVE_API_KEY") or None
        ca = ca_cert or os.environ.get("COVE_CA_CERT") or None
        t = DEFAULT_TIMEOUT if timeout is None else timeout
        local = host is None
        if host is None:
            host = f"unix:{default_home() / 'coved.sock'}"
        if host.startswith("unix:"):
            return cls("http://localhost", host[5:], key, ca, t, local)
        base = host.rstrip("/")
        if "://" not in base:
            base = f"http://{base}"
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"COVE_HOST {host!r}: use http://HOST:PORT, https://… or unix:/PATH")
        return cls(base, None, key, ca, t, local)

    @property
    def ws_base(self) -> str:
        if self.base_url.startswith("https://"):
            return "wss://" + self.base_url[len("https://") :]
        return "ws://" + self.base_url[len("http://") :]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings for ``https``: the system's roots plus ``ca_cert``."""
        if not self.base_url.startswith("https://"):
            return None
        ctx = ssl.create_default_context()
        if self.ca_cert:
            try:
                ctx.load_verify_locations(cafile=self.ca_cert)
            except (OSError, ssl.SSLError) as e:
                raise ConnectionFailed(f"reading the CA certificate {self.ca_cert}: {e}") from e
        return ctx

    def headers(self) -> dict[str, str]:
        from . import __version__

        h = {"user-agent": f"cove-python/{__version__}"}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h


def start_local_coved(cfg: Config) -> None:
    """Starts this machine's coved the way the CLI does (``cove daemon start``: one
    implementation of where it runs, its log and its lock), or says how to."""
    cove = shutil.which("cove")
    if cove is None:
        raise ConnectionFailed(
            f"no coved answers on {cfg.uds} and `cove` is not on PATH to start one: "
            "start coved, or set COVE_HOST and COVE_API_KEY"
        )
    r = subprocess.run([cove, "daemon", "start"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ConnectionFailed(f"`cove daemon start` failed: {r.stderr.strip()}")
