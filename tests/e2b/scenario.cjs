// The commands and files an E2B user runs from node, with the official `e2b` npm package,
// against coved (tests/e2b.rs). E2B_MODULE names the installed package; every check asserts.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { Sandbox, CommandExitError } = require(process.env.E2B_MODULE);

const version = require(`${process.env.E2B_MODULE}/package.json`).version;
const step = (s) => console.log(`[node ${version}] ${s}`);

(async () => {
  step("create");
  const sbx = await Sandbox.create({ timeoutMs: 600_000, metadata: { suite: "e2b-node" } });

  step("commands: foreground, streamed, exit codes, user");
  const chunks = [];
  const r = await sbx.commands.run("for i in 1 2 3; do echo l$i; sleep 0.1; done; id -un", {
    onStdout: (d) => chunks.push(d),
  });
  assert.equal(r.stdout, "l1\nl2\nl3\nuser\n");
  assert.equal(chunks.join(""), r.stdout);
  await assert.rejects(sbx.commands.run("echo bad >&2; exit 4"), (e) => {
    assert.ok(e instanceof CommandExitError);
    assert.equal(e.exitCode, 4);
    assert.equal(e.stderr, "bad\n");
    return true;
  });
  assert.equal((await sbx.commands.run("id -u", { user: "root" })).stdout, "0\n");

  step("commands: background, stdin, reconnect, kill");
  const h = await sbx.commands.run("read a; echo got-$a", { background: true, stdin: true });
  const listed = await sbx.commands.list();
  assert.ok(listed.some((p) => p.pid === h.pid), JSON.stringify(listed));
  await h.disconnect();
  const again = await sbx.commands.connect(h.pid);
  await sbx.commands.sendStdin(h.pid, "node\n");
  const res = await again.wait();
  assert.equal(res.stdout, "got-node\n");
  const long = await sbx.commands.run("sleep 600", { background: true });
  assert.equal(await sbx.commands.kill(long.pid), true);
  assert.equal(await sbx.commands.kill(long.pid), false);

  step("files");
  await sbx.files.write("/home/user/n/a.txt", "hello node");
  assert.equal(await sbx.files.read("/home/user/n/a.txt"), "hello node");
  const info = await sbx.files.getInfo("/home/user/n/a.txt");
  assert.equal(info.size, 10);
  assert.equal(info.owner, "user");
  const names = (await sbx.files.list("/home/user/n")).map((e) => e.name);
  assert.deepEqual(names, ["a.txt"]);
  await sbx.files.rename("/home/user/n/a.txt", "/home/user/n/b.txt");
  assert.equal(await sbx.files.exists("/home/user/n/a.txt"), false);
  assert.equal(await sbx.files.exists("/home/user/n/b.txt"), true);
  const blob = crypto.randomBytes(8 << 20);
  await sbx.files.write("/tmp/blob.bin", blob);
  const back = Buffer.from(await sbx.files.read("/tmp/blob.bin", { format: "bytes" }));
  assert.ok(back.equals(blob), `${back.length} bytes back of ${blob.length}`);
  await sbx.files.remove("/home/user/n");
  assert.equal(await sbx.files.exists("/home/user/n/b.txt"), false);

  step("watch");
  const seen = [];
  const w = await sbx.files.watchDir("/tmp", (e) => seen.push(e));
  await sbx.files.write("/tmp/watched-node.txt", "w");
  const end = Date.now() + 60_000;
  while (!seen.some((e) => e.name === "watched-node.txt")) {
    assert.ok(Date.now() < end, JSON.stringify(seen));
    await new Promise((r) => setTimeout(r, 50));
  }
  await w.stop();

  step("kill");
  await sbx.kill();
  assert.equal(await Sandbox.kill(sbx.sandboxId), false, "killed already");
  step("all passed");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
