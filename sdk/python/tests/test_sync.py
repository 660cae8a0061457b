"""Every method of the synchronous SDK against a real coved and real guests."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
import time
from typing import Callable

import pytest

import cove
from cove import (
    Client,
    CommandFailed,
    EventKind,
    FsEventKind,
    NetworkPolicy,
    Sandbox,
    SandboxState,
)

MiB = 1 << 20


def blob(n: int, seed: int = 1) -> bytes:
    """``n`` bytes that are not text and do not repeat in short periods."""
    out = bytearray()
    h = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])


def until(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Waits for ``cond`` (polling), failing after ``limit`` seconds: a deadline, not a timing."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"waited {limit} s for {what}")
        time.sleep(0.1)


def test_run_returns_exit_codes_and_keeps_streams_apart(sbx: Sandbox) -> None:
    r = sbx.commands.run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    assert r.pid is not None and r.pid > 1
    r = sbx.commands.run(["printf", "%s|", "a b", "$HOME"], env={"X": "1"}, cwd="/tmp")
    assert r.stdout == "a b|$HOME|"
    assert sbx.commands.run("echo $X; pwd", env={"X": "y"}, cwd="/tmp").stdout == "y\n/tmp\n"
    assert sbx.commands.run("id -u", user="nobody").stdout == "65534\n"
    with pytest.raises(CommandFailed) as e:
        sbx.commands.run("echo nope >&2; exit 4", check=True)
    assert e.value.result.exit_code == 4 and "nope" in str(e.value)
    r = sbx.commands.run("sleep 30", timeout=1)
    assert r.timed_out and not r.ok


def test_output_arrives_in_order_through_callbacks_and_the_iterator(sbx: Sandbox) -> None:
    got: list[bytes] = []
    r = sbx.commands.run("seq 1 20000", on_stdout=got.append)
    expected = "".join(f"{i}\n" for i in range(1, 20001))
    assert b"".join(got).decode() == expected == r.stdout
    with sbx.commands.stream("seq 1 5000; echo done >&2") as s:
        out = b"".join(o.data for o in s if o.stream == "stdout")
        assert s.result is not None and s.result.exit_code == 0
    assert out.decode() == "".join(f"{i}\n" for i in range(1, 5001))


def test_twenty_mib_of_binary_through_stdin_and_stdout(sbx: Sandbox) -> None:
    data = blob(20 * MiB)
    r = sbx.commands.run(["cat"], stdin=data)
    assert r.exit_code == 0
    assert len(r.stdout_bytes) == len(data)
    assert r.stdout_bytes == data
    # A generator is streamed as it yields; the guest sees every byte.
    r = sbx.commands.run(
        "sha256sum | cut -c1-64", stdin=(data[i : i + MiB] for i in range(0, len(data), MiB))
    )
    assert r.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_twenty_mib_of_binary_through_files(sbx: Sandbox, tmp_path: Path) -> None:
    data = blob(20 * MiB, seed=2)
    assert sbx.files.write("/root/big.bin", (data[i : i + MiB] for i in range(0, len(data), MiB))) == len(data)
    assert sbx.files.stat("/root/big.bin").size == len(data)
    r = sbx.commands.run("sha256sum /root/big.bin | cut -c1-64")
    assert r.stdout.strip() == hashlib.sha256(data).hexdigest()
    with sbx.files.read_stream("/root/big.bin") as s:
        pieces = list(s)
    assert b"".join(pieces) == data
    assert sbx.files.read("/root/big.bin") == data
    local = tmp_path / "big.bin"
    assert sbx.files.download("/root/big.bin", local) == len(data)
    assert local.read_bytes() == data
    assert sbx.files.upload(local, "/root/copy.bin", mode=0o600) == len(data)
    st = sbx.files.stat("/root/copy.bin")
    assert (st.size, st.mode & 0o777) == (len(data), 0o600)


def test_files(sbx: Sandbox) -> None:
    f = sbx.files
    f.mkdir("/srv/a/b")
    f.write("/srv/a/b/x.txt", "héllo\n")
    assert f.read_text("/srv/a/b/x.txt") == "héllo\n"
    names = [(e.name, e.is_dir) for e in f.list("/srv/a")]
    assert names == [("b", True)]
    st = f.stat("/srv/a/b/x.txt")
    assert (st.kind, st.size, st.owner) == (cove.FileKind.FILE, 7, "root")
    assert f.exists("/srv/a/b/x.txt") and not f.exists("/srv/nope")
    f.rename("/srv/a/b/x.txt", "/srv/a/y.txt")
    assert sorted(e.name for e in f.list("/srv/a")) == ["b", "y.txt"]
    with pytest.raises(cove.Conflict):
        f.remove("/srv/a")
    f.remove("/srv/a", recursive=True)
    assert not f.exists("/srv/a")
    with pytest.raises(cove.NotFound):
        f.read("/srv/a/y.txt")


def test_watch_sees_changes_as_they_happen(sbx: Sandbox) -> None:
    sbx.files.mkdir("/srv/w/sub")
    names: set[str] = set()
    with sbx.files.watch("/srv/w", recursive=True) as w:
        # More changes than a session's allowance of control frames: a watch is not cut.
        sbx.commands.run("for i in $(seq 1 150); do echo $i > /srv/w/sub/f$i; done")
        for ev in w:
            assert ".cove" not in ev.name, "the agent's temporary files are hidden"
            if ev.kind in (FsEventKind.CREATE, FsEventKind.WRITE):
                names.add(ev.name)
            if len(names) == 150 or ev.kind is FsEventKind.OVERFLOW:
                break
    assert names == {f"sub/f{i}" for i in range(1, 151)}


def test_a_background_command_outlives_its_handle_and_is_found_again(sbx: Sandbox) -> None:
    lines: list[bytes] = []
    h = sbx.commands.run(
        "while read l; do echo got:$l; done", background=True, tag="echoer", stdin=True,
        on_stdout=lines.append,
    )
    h.send_stdin("one\n")
    until(lambda: b"got:one" in b"".join(lines), "the background command's output")
    h.disconnect()
    # Another client (a new process would do the same) finds it by tag and by pid.
    with Client() as c2:
        again = Sandbox.connect(sbx.id, client=c2)
        found = {c.tag: c for c in again.commands.list()}
        assert "echoer" in found and found["echoer"].pid == h.pid and found["echoer"].keep
        got: list[bytes] = []
        h2 = again.commands.connect("echoer", on_stdout=got.append)
        again.commands.send_stdin("echoer", "two\n")
        until(lambda: b"got:two" in b"".join(got), "output to the second follower")
        h2.kill()
        r = h2.wait(60)
        assert r.exit_code == 137
    with pytest.raises(cove.NotFound):
        sbx.commands.kill(h.pid)
    # A tag names one running command.
    h3 = sbx.commands.run("sleep 600", background=True, tag="solo")
    with pytest.raises(cove.Conflict):
        sbx.commands.run("sleep 600", background=True, tag="solo")
    h3.kill()
    assert h3.wait(60).exit_code == 137


def test_pty(sbx: Sandbox) -> None:
    out = bytearray()
    t = sbx.pty.create(30, 100, on_data=out.extend)
    t.send_stdin("stty size; tty; exit 5\n")
    r = t.wait(60)
    text = out.decode(errors="replace")
    assert r.exit_code == 5
    assert "30 100" in text and "/dev/pts/" in text
    t2 = sbx.pty.create(cmd="sleep 0.5; stty size", rows=10, cols=40)
    t2.resize(12, 50)
    assert "12 50" in t2.wait(60).stdout


def test_errors_map_to_exceptions(client: Client, sbx: Sandbox) -> None:
    with pytest.raises(cove.NotFound):
        Sandbox.connect("0123456789ab", client=client)
    with pytest.raises(cove.ProgramNotFound) as e:
        sbx.commands.run(["/no/such/program"])
    assert e.value.status == 422 and e.value.code == "program_not_found"
    with pytest.raises(cove.BadRequest) as b:
        Sandbox.create(image="busybox", cpus=1000, client=client)
    assert "cpus" in b.value.message
    with pytest.raises(cove.Unauthorized):
        with Client(client.config.base_url, "cove_" + "0" * 64) as bad:
            list(Sandbox.list(client=bad))
    with pytest.raises(cove.QuotaExceeded):
        with Client(client.config.base_url, os.environ["COVE_QUOTA_KEY"]) as q:
            Sandbox.create(image="busybox", client=q)
    with pytest.raises(cove.ConnectionFailed):
        with Client("http://127.0.0.1:9", "k") as gone:
            list(Sandbox.list(client=gone))


def test_a_wrong_tenants_key_sees_nothing(other: Client, sbx: Sandbox) -> None:
    assert sbx.id not in {s.id for s in Sandbox.list(client=other)}
    with pytest.raises(cove.NotFound):
        Sandbox.connect(sbx.id, client=other)
    theirs = Sandbox(sbx.info, other)
    with pytest.raises(cove.NotFound):
        theirs.commands.run("true")
    with pytest.raises(cove.NotFound):
        theirs.files.read("/etc/hostname")
    with pytest.raises(cove.NotFound):
        theirs.commands.list()
    with pytest.raises(cove.NotFound):
        theirs.pause()
    assert list(theirs.events()) == []
    # kill() of something it cannot see removes nothing.
    theirs.kill()
    assert sbx.refresh().state is SandboxState.RUNNING


def test_lifecycle_snapshot_fork_and_what_a_sandbox_reports(client: Client) -> None:
    with Sandbox.create(
        image="busybox", client=client, env={"GREETING": "hi"}, labels={"suite": "python-sdk", "kind": "life"},
        ttl=600, idle_timeout=600, on_idle="hibernate", network=NetworkPolicy(deny=("pypi.org",)),
    ) as s:
        assert s.info.env["GREETING"] == "hi" and s.info.labels["kind"] == "life"
        assert s.info.network.deny == ("pypi.org",)
        s.commands.run("echo kept > /root/state")
        assert s.pause().state is SandboxState.PAUSED
        assert s.resume().state is SandboxState.RUNNING
        assert s.hibernate().state is SandboxState.HIBERNATED
        again = Sandbox.connect(s.id, client=client)  # resumes
        assert again.info.state is SandboxState.RUNNING
        assert s.files.read_text("/root/state") == "kept\n"
        snap = s.snapshot(name=f"py-snap-{os.getpid()}")
        assert snap.sandbox == s.id
        with Sandbox.create(template=snap.id, client=client) as restored:
            assert restored.commands.run("cat /root/state").stdout == "kept\n"
        clones = s.fork(2)
        try:
            assert len(clones) == 2
            for c in clones:
                assert c.commands.run("cat /root/state; echo $GREETING").stdout == "kept\nhi\n"
        finally:
            for c in clones:
                c.kill()
        u = s.url(8080, expires=60)
        assert f"8080-{s.id}" in u.url and u.expires_at.year >= 2026
        assert len(s.traffic_token()) > 10
        m = s.metrics()
        assert 0 < m.memory_bytes <= m.memory_limit_bytes + (64 << 20)
        assert any(p.pid == 1 for p in s.processes())
        assert "Linux" in s.logs() or len(s.logs()) > 0
        s.set_network(NetworkPolicy(mode="none"))
        assert s.refresh().network.mode == "none"
        kinds = [e.kind for e in s.events()]
        for k in (EventKind.CREATING, EventKind.RUNNING, EventKind.PAUSED, EventKind.HIBERNATED, EventKind.NETWORK):
            assert k in kinds, kinds
        actors = {str(e.actor) for e in s.events()}
        assert all(a.startswith("key:") for a in actors), actors
        # Following: an event recorded after the stream opened arrives.
        with s.events(follow=True, after=max(e.seq for e in s.events())) as ev:
            threading.Thread(target=s.pause, daemon=True).start()
            first = next(iter(ev))
        assert first.kind in (EventKind.PAUSED,)
        sid = s.id
    with pytest.raises(cove.NotFound):
        Sandbox.connect(sid, client=client)


def test_list_pages_and_filters(client: Client) -> None:
    tag = f"list-{os.getpid()}"
    made = [Sandbox.create(image="busybox", client=client, labels={"batch": tag}) for _ in range(3)]
    try:
        ids = [s.id for s in Sandbox.list(labels={"batch": tag}, page_size=1, client=client)]
        assert ids == [s.id for s in made]
        made[0].pause()
        paused = [s.id for s in Sandbox.list(state=SandboxState.PAUSED, labels={"batch": tag}, client=client)]
        assert paused == [made[0].id]
    finally:
        for s in made:
            s.kill()


def test_the_context_manager_removes_unless_kept(client: Client) -> None:
    with Sandbox.create(image="busybox", client=client) as s:
        gone = s.id
    with Sandbox.create(image="busybox", client=client, keep=True) as k:
        kept = k.id
    try:
        with pytest.raises(cove.NotFound):
            Sandbox.connect(gone, client=client)
        assert Sandbox.connect(kept, client=client).info.state is SandboxState.RUNNING
    finally:
        Sandbox.connect(kept, client=client).kill()
