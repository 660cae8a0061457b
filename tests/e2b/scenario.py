"""What an E2B user does, run with the official `e2b` SDK against coved (tests/e2b.rs).

Environment: E2B_API_URL, E2B_SANDBOX_URL (coved), E2B_API_KEY (a tenant's key in the e2b_
form), OTHER_API_KEY (another tenant's). Every check asserts; the first failure ends the run
with a traceback and a non-zero exit.
"""

import asyncio
import hashlib
import os
import sys
import time

import httpx
from e2b import (
    AsyncSandbox,
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)

try:
    from e2b import FileNotFoundException
except ImportError:  # 2.45 raises NotFoundException
    FileNotFoundException = NotFoundException  # type: ignore

from e2b.sandbox.commands.command_handle import PtySize

VERSION = __import__("importlib.metadata").metadata.version("e2b")
RUN = f"{VERSION}-{os.getpid()}"
API = os.environ["E2B_API_URL"]
OTHER = os.environ["OTHER_API_KEY"]


def step(name):
    print(f"[{VERSION}] {name}", flush=True)


def wait_for(what, cond, timeout=120.0):
    """Polls `cond` until it holds (never a fixed sleep)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


step("create from base")
sbx = Sandbox.create(timeout=600, metadata={"suite": "e2b", "run": RUN}, envs={"FROM_CREATE": "1"})
info = sbx.get_info()
assert info.template_id == "base", info
assert info.metadata == {"suite": "e2b", "run": RUN}, info.metadata
assert str(info.state).lower().endswith("running"), info.state

step("commands: foreground, environment, default user, exit codes")
r = sbx.commands.run("echo out; echo err >&2; echo $FROM_CREATE $MINE; id -un; pwd", envs={"MINE": "2"})
assert r.exit_code == 0
assert r.stdout == "out\n1 2\nuser\n/home/user\n", repr(r.stdout)
assert r.stderr == "err\n", repr(r.stderr)
r = sbx.commands.run("id -u", user="root")
assert r.stdout.strip() == "0", r.stdout
try:
    sbx.commands.run("echo partial; exit 7")
    raise AssertionError("a non-zero exit must raise")
except CommandExitException as e:
    assert e.exit_code == 7 and e.stdout == "partial\n", (e.exit_code, e.stdout)
r = sbx.commands.run("pwd", cwd="/tmp")
assert r.stdout == "/tmp\n"

step("commands: streamed output arrives in order")
chunks = []
r = sbx.commands.run("for i in 1 2 3 4 5; do echo line-$i; sleep 0.1; done", on_stdout=chunks.append)
assert "".join(chunks) == "".join(f"line-{i}\n" for i in range(1, 6)), chunks
assert len(chunks) >= 2, "the output was streamed, not delivered at the end"

step("commands: background, stdin, reconnect, list, kill")
h = sbx.commands.run("read a; echo got-$a; read b; echo got-$b", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "one\n")
listed = {p.pid: p for p in sbx.commands.list()}
assert h.pid in listed, listed
assert listed[h.pid].cmd == "/bin/bash", listed[h.pid]
h.disconnect()
again = sbx.commands.connect(h.pid)
sbx.commands.send_stdin(h.pid, "two\n")
res = again.wait()
assert "got-two" in res.stdout, res.stdout
assert res.exit_code == 0
long = sbx.commands.run("sleep 600", background=True)
assert sbx.commands.kill(long.pid) is True
try:
    long.wait()
    raise AssertionError("a killed command must not end well")
except CommandExitException as e:
    assert e.exit_code != 0
assert sbx.commands.kill(long.pid) is False, "killing a gone process is False"
try:
    sbx.commands.connect(999999)
    raise AssertionError("no such process")
except (NotFoundException, SandboxException):
    pass
if hasattr(sbx.commands, "close_stdin"):
    h = sbx.commands.run("cat; echo closed", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "x\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "x\nclosed\n"

step("commands: timeout kills")
try:
    sbx.commands.run("sleep 60", timeout=2)
    raise AssertionError("the timeout must end it")
except (TimeoutException, CommandExitException):
    pass

step("pty")
out = bytearray()
pty = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.resize(pty.pid, PtySize(rows=33, cols=101))
sbx.pty.send_stdin(pty.pid, b"stty size; tput cols; exit 3\n")
try:
    pty.wait(on_pty=lambda b: out.extend(b))
except CommandExitException as e:
    assert e.exit_code == 3, e.exit_code
text = out.decode(errors="replace")
assert "33 101" in text and "101" in text, text

step("files: write, read, list, stat, rename, remove")
w = sbx.files.write("/home/user/dir/a.txt", "hello")
assert w.path == "/home/user/dir/a.txt"
assert sbx.files.read("/home/user/dir/a.txt") == "hello"
assert sbx.files.read("dir/a.txt") == "hello", "relative to the user's home"
sbx.files.write_files([{"path": "/tmp/b.txt", "data": "B"}, {"path": "/tmp/c.bin", "data": b"\x00\x01\xff"}])
assert bytes(sbx.files.read("/tmp/c.bin", format="bytes")) == b"\x00\x01\xff"
e = sbx.files.get_info("/home/user/dir/a.txt")
assert (e.size, e.owner, e.permissions) == (5, "user", "-rw-r--r--"), e
assert sbx.files.exists("/tmp/b.txt") and not sbx.files.exists("/tmp/none")
names = sorted(x.name for x in sbx.files.list("/home/user/dir"))
assert names == ["a.txt"], names
assert sbx.files.make_dir("/home/user/new/deep") is True
assert sbx.files.make_dir("/home/user/new/deep") is False
assert sbx.commands.run("stat -c %U /home/user/new/deep").stdout.strip() == "user"
sbx.files.rename("/home/user/dir/a.txt", "/home/user/dir/z.txt")
assert sbx.files.read("/home/user/dir/z.txt") == "hello"
sbx.files.remove("/home/user/dir")
assert not sbx.files.exists("/home/user/dir/z.txt")
try:
    sbx.files.read("/tmp/none")
    raise AssertionError("a missing file")
except (FileNotFoundException, NotFoundException):
    pass

step("files: a relative path starts at the user's home, as /etc/passwd has it")
sbx.commands.run("useradd --create-home --home-dir /srv/svc svc", user="root")
w = sbx.files.write("note.txt", "svc's", user="svc")
assert w.path == "/srv/svc/note.txt", w.path
r = sbx.commands.run("cat /srv/svc/note.txt; stat -c %U /srv/svc/note.txt", user="root")
assert r.stdout == "svc'ssvc\n", repr(r.stdout)
assert sbx.files.read("~/note.txt", user="svc") == "svc's"
assert sbx.files.write("r.txt", "r", user="root").path == "/root/r.txt"

step("files: 50 MB up and down")
blob = os.urandom(50 << 20)
sbx.files.write("/tmp/big.bin", blob)
assert sbx.commands.run("sha256sum /tmp/big.bin").stdout.split()[0] == hashlib.sha256(blob).hexdigest()
back = bytes(sbx.files.read("/tmp/big.bin", format="bytes"))
assert back == blob, (len(back), len(blob))

step("files: watch (polled)")
assert sbx.files.make_dir("/tmp/watched")
watcher = sbx.files.watch_dir("/tmp/watched", recursive=True)
sbx.files.write("/tmp/watched/new.txt", "x")
sbx.commands.run("mkdir /tmp/watched/sub && echo y > /tmp/watched/sub/deep.txt")
seen = []


def saw(name):
    seen.extend(watcher.get_new_events())
    return any(ev.name == name for ev in seen)


wait_for("a watch event", lambda: saw("new.txt"))
wait_for("a recursive watch event", lambda: saw("sub/deep.txt"))
assert all(".cove-" not in ev.name for ev in seen), seen
watcher.stop()

step("timeout: set later")
sbx.set_timeout(900)
end = sbx.get_info().end_at
assert 800 < (end.timestamp() - time.time()) < 1000, end

step("timeout: the end kills")
short = Sandbox.create(timeout=4)


def gone(sid):
    try:
        Sandbox.get_info(sid)
        return False
    except NotFoundException:
        return True


wait_for("the timeout to end it", lambda: gone(short.sandbox_id))
# Its disk stays until it is removed, as with any stopped Cove sandbox: kill still removes it.
assert Sandbox.kill(short.sandbox_id) is True

if "lifecycle" in __import__("inspect").signature(Sandbox.create).parameters:
    step("timeout: the end pauses (lifecycle on_timeout pause)")
    p = Sandbox.create(timeout=6, lifecycle={"on_timeout": "pause"})
    p.files.write("/tmp/p.txt", "kept")
    wait_for(
        "the timeout to pause it",
        lambda: str(Sandbox.get_info(p.sandbox_id).state).lower().endswith("paused"),
    )
    woke = Sandbox.connect(p.sandbox_id, timeout=600)
    assert woke.files.read("/tmp/p.txt") == "kept"
    assert woke.kill() is True

step("list: filters and pages")
second = Sandbox.create(timeout=600, metadata={"suite": "e2b", "run": RUN, "which": "second"})
mine = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}))
ids = []
while mine.has_next:
    ids += [s.sandbox_id for s in mine.next_items()]
assert sorted(ids) == sorted([sbx.sandbox_id, second.sandbox_id]), ids
paged = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), limit=1)
pages = []
while paged.has_next:
    pages.append([s.sandbox_id for s in paged.next_items()])
assert [len(p) for p in pages] == [1, 1], pages
one = Sandbox.list(query=SandboxQuery(metadata={"run": RUN, "which": "second"})).next_items()
assert [s.sandbox_id for s in one] == [second.sandbox_id], one

step("metrics")
metrics = sbx.get_metrics()
assert metrics and metrics[-1].mem_total == 512 << 20, metrics
assert metrics[-1].mem_used > 0

step("pause and connect")
sbx.files.write("/tmp/kept.txt", "still here")
assert sbx.pause() is True
assert sbx.pause() is False, "already paused"
paused = [s for s in Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()]
assert sbx.sandbox_id in [s.sandbox_id for s in paused], paused
assert not sbx.is_running()
back = Sandbox.connect(sbx.sandbox_id)
assert back.files.read("/tmp/kept.txt") == "still here"
assert back.commands.run("echo awake").stdout == "awake\n"

step("snapshots and fork")
if hasattr(back, "create_snapshot"):
    snap = back.create_snapshot()
    from_snap = Sandbox.create(template=snap.snapshot_id, timeout=600)
    assert from_snap.files.read("/tmp/kept.txt") == "still here"
    from_snap.kill()
if hasattr(back, "fork"):
    clone = back.fork()
    clone = clone[0] if isinstance(clone, list) else clone
    assert clone.sandbox_id != back.sandbox_id
    assert clone.files.read("/tmp/kept.txt") == "still here"
    clone.kill()

step("another tenant sees nothing; a wrong access token is refused")
try:
    Sandbox.connect(sbx.sandbox_id, api_key=OTHER)
    raise AssertionError("another tenant's sandbox")
except Exception as e:  # noqa: BLE001 — the SDKs raise NotFound under different names
    assert "not found" in str(e).lower(), e
assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=OTHER).next_items()]
r = httpx.get(
    f"{os.environ['E2B_SANDBOX_URL']}/health",
    headers={"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "wrong"},
)
assert r.status_code == 401, r
r = httpx.post(
    f"{os.environ['E2B_SANDBOX_URL']}/process.Process/List",
    headers={"E2b-Sandbox-Id": sbx.sandbox_id, "Content-Type": "application/json"},
    content=b"{}",
)
assert r.status_code == 401, r

step("async")


async def amain():
    a = await AsyncSandbox.create(timeout=600)
    r = await a.commands.run("echo async")
    assert r.stdout == "async\n"
    events = []
    handle = await a.files.watch_dir("/tmp", on_event=events.append)
    await a.files.write("/tmp/streamed.txt", "z")
    end = time.monotonic() + 60
    while not any(e.name == "streamed.txt" for e in events):
        assert time.monotonic() < end, events
        await asyncio.sleep(0.05)
    await handle.stop()
    await a.files.write("/tmp/x", "y")
    assert await a.files.read("/tmp/x") == "y"
    await a.kill()


asyncio.run(amain())

step("kill")
assert back.kill() is True
assert second.kill() is True
assert Sandbox.kill(sbx.sandbox_id) is False if hasattr(Sandbox, "kill") else True
print(f"[{VERSION}] all passed", flush=True)
