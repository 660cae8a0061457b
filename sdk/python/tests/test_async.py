"""Every method of the async SDK (``cove.aio``) against a real coved and real guests."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import AsyncIterator

import pytest

import cove
from cove import AsyncSandbox, EventKind, NetworkPolicy, SandboxState
from cove.aio import AsyncClient

from .test_sync import MiB, blob

pytestmark = pytest.mark.anyio


async def test_commands_sync_and_streamed() -> None:
    async with AsyncClient() as c:
        async with await AsyncSandbox.create(image="busybox", client=c) as s:
            r = await s.commands.run("echo out; echo err >&2; exit 3", env={"A": "b"})
            assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
            assert (await s.commands.run("id -u", user="nobody")).stdout == "65534\n"
            got: list[bytes] = []

            async def on_out(b: bytes) -> None:
                got.append(b)

            r = await s.commands.run("seq 1 20000", on_stdout=on_out)
            assert b"".join(got).decode() == r.stdout == "".join(f"{i}\n" for i in range(1, 20001))
            stream = await s.commands.stream("seq 1 3000")
            async with stream:
                out = b"".join([o.data async for o in stream])
            assert stream.result is not None and stream.result.exit_code == 0
            assert out.decode() == "".join(f"{i}\n" for i in range(1, 3001))
            assert (await s.commands.run("sleep 30", timeout=1)).timed_out
            with pytest.raises(cove.CommandFailed):
                await s.commands.run("exit 2", check=True)
            with pytest.raises(cove.ProgramNotFound):
                await s.commands.run(["/no/such/program"])

            # Twenty MiB of binary through stdin and stdout, and through files.
            data = blob(20 * MiB, seed=3)

            async def pieces() -> AsyncIterator[bytes]:
                for i in range(0, len(data), MiB):
                    yield data[i : i + MiB]

            r = await s.commands.run(["cat"], stdin=pieces())
            assert r.stdout_bytes == data
            assert await s.files.write("/root/big.bin", pieces()) == len(data)
            assert await s.files.read("/root/big.bin") == data
            r = await s.commands.run("sha256sum /root/big.bin | cut -c1-64")
            assert r.stdout.strip() == hashlib.sha256(data).hexdigest()

            # A background command outlives its handle; found again by tag.
            h = await s.commands.run("while read l; do echo got:$l; done", background=True, tag="aecho", stdin=True)
            await h.send_stdin("one\n")
            await h.disconnect()
            assert "aecho" in {c.tag for c in await s.commands.list()}
            seen: list[bytes] = []
            h2 = await s.commands.connect("aecho", on_stdout=seen.append)
            await s.commands.send_stdin("aecho", "two\n")
            for _ in range(600):
                if b"got:two" in b"".join(seen):
                    break
                await asyncio.sleep(0.1)
            assert b"got:two" in b"".join(seen)
            await h2.kill()
            assert (await h2.wait(60)).exit_code == 137

            # A terminal.
            buf = bytearray()
            t = await s.pty.create(20, 70, on_data=buf.extend)
            await t.send_stdin("stty size; exit 6\n")
            assert (await t.wait(60)).exit_code == 6
            assert "20 70" in buf.decode(errors="replace")


async def test_files_lifecycle_and_reports() -> None:
    async with AsyncClient() as c:
        s = await AsyncSandbox.create(
            image="busybox", client=c, labels={"suite": "python-sdk-async"}, ttl=600,
            network=NetworkPolicy(allow=("10.0.0.0/8",)),
        )
        async with s:
            f = s.files
            await f.mkdir("/srv/x/y")
            await f.write("/srv/x/y/a.txt", "text")
            assert await f.read_text("/srv/x/y/a.txt") == "text"
            assert [e.name for e in await f.list("/srv/x/y")] == ["a.txt"]
            assert (await f.stat("/srv/x/y/a.txt")).size == 4
            await f.rename("/srv/x/y/a.txt", "/srv/x/b.txt")
            assert await f.exists("/srv/x/b.txt") and not await f.exists("/srv/x/y/a.txt")
            watch = await f.watch("/srv/x", recursive=True)
            async with watch:
                await f.write("/srv/x/y/new", "1")
                async for ev in watch:
                    if ev.name == "y/new":
                        break
            await f.remove("/srv/x", recursive=True)
            with pytest.raises(cove.NotFound):
                await f.read("/srv/x/b.txt")

            assert (await s.pause()).state is SandboxState.PAUSED
            assert (await s.resume()).state is SandboxState.RUNNING
            await s.commands.run("echo kept > /root/k")
            assert (await s.hibernate()).state is SandboxState.HIBERNATED
            again = await AsyncSandbox.connect(s.id, client=c)
            assert again.info.state is SandboxState.RUNNING
            snap = await s.snapshot()
            async with await AsyncSandbox.create(template=snap.id, client=c) as r:
                assert (await r.commands.run("cat /root/k")).stdout == "kept\n"
            clones = await s.fork(2)
            try:
                outs = await asyncio.gather(*(k.commands.run("cat /root/k") for k in clones))
                assert [o.stdout for o in outs] == ["kept\n", "kept\n"]
            finally:
                await asyncio.gather(*(k.kill() for k in clones))
            assert s.id in (await s.url(3000)).url
            assert await s.traffic_token()
            assert (await s.metrics()).memory_limit_bytes > 0
            assert any(p.pid == 1 for p in await s.processes())
            assert isinstance(await s.logs(), str)
            await s.set_network(NetworkPolicy(mode="none"))
            assert (await s.refresh()).network.mode == "none"
            events = await s.events()
            kinds = [e.kind async for e in events]
            assert EventKind.HIBERNATED in kinds and EventKind.NETWORK in kinds
            ids = [i.id async for i in AsyncSandbox.list(labels={"suite": "python-sdk-async"}, page_size=1, client=c)]
            assert s.id in ids
        with pytest.raises(cove.NotFound):
            await AsyncSandbox.connect(s.id, client=c)


async def test_errors_and_another_tenant() -> None:
    async with AsyncClient() as c, AsyncClient(os.environ["COVE_HOST"], os.environ["COVE_OTHER_KEY"]) as o:
        async with await AsyncSandbox.create(image="busybox", client=c) as s:
            assert s.id not in [i.id async for i in AsyncSandbox.list(client=o)]
            with pytest.raises(cove.NotFound):
                await AsyncSandbox.connect(s.id, client=o)
            theirs = AsyncSandbox(s.info, o)
            with pytest.raises(cove.NotFound):
                await theirs.commands.run("true")
            with pytest.raises(cove.NotFound):
                await theirs.files.write("/tmp/x", b"x")
            with pytest.raises(cove.BadRequest):
                await AsyncSandbox.create(image="busybox", memory_mib=1, client=c)
            async with AsyncClient(os.environ["COVE_HOST"], os.environ["COVE_QUOTA_KEY"]) as q:
                with pytest.raises(cove.QuotaExceeded):
                    await AsyncSandbox.create(image="busybox", client=q)
