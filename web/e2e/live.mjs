// End-to-end: the explorer's Live tab attached to a real `ringlab serve` node.
// Starts one node (target/debug/ringlab, or $RINGLAB_BIN) that allows the page's
// origin, opens /?live=URL, and checks: the stream opens and the membership view
// lists the node with its hint count; its ring is drawn and a typed key shows its
// replicas; a write made with plain HTTP shows up in the live log in the explorer's
// wording; a second node joins and the messages between the two are drawn as dots
// flying between them (GET /events?peers=1 on A, ?peers=only on B: each message
// once, from its sender), counted by kind; killing the node is
// shown as "retrying", and restarting it reattaches on its own; Disconnect closes
// the stream.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import net from "node:net";
import { spawn, execFileSync } from "node:child_process";
import { serve, browser, artifacts, root, check } from "./lib.mjs";

const bin = process.env.RINGLAB_BIN || path.join(root, "target", "debug", "ringlab");
if (!fs.existsSync(bin)) throw new Error(`${bin} missing: cargo build -p ringlab-server --bin ringlab`);

const freePort = () => new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

fs.mkdirSync(artifacts, { recursive: true });
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ringlab-live-"));
fs.writeFileSync(path.join(dir, "cluster.key"), execFileSync(bin, ["keygen"]));
const server = await serve();
const origin = `http://127.0.0.1:${server.address().port}`;
const [peer, httpPort] = [await freePort(), await freePort()];
const nodeUrl = `http://127.0.0.1:${httpPort}`;
// Node processes by id: A (the one the page attaches to) and B (joins later).
const [peerB, httpB] = [await freePort(), await freePort()];
const nodes = {
  A: { peer, http: httpPort, data: "data", child: null },
  B: { peer: peerB, http: httpB, data: "dataB", child: null },
};
// Starts node `id`, seeded by A, with the page's origin allowed.
const startNode = (id) => {
  const n = nodes[id];
  const log = fs.openSync(path.join(dir, `${id}.log`), "a");
  n.child = spawn(bin, ["serve", "--id", id, "--peer-addr", `127.0.0.1:${n.peer}`, "--http", `127.0.0.1:${n.http}`,
    "--data-dir", path.join(dir, n.data), "--seeds", `127.0.0.1:${peer}`, "--cluster-key-file", path.join(dir, "cluster.key"),
    "--n", "1", "--r", "1", "--w", "1", "--allow-origin", origin], { stdio: ["ignore", log, log] });
};
// kill -9 node `id`, if running, and wait for it to exit.
const stopNode = async (id) => {
  const n = nodes[id];
  if (!n.child) return;
  const done = new Promise((r) => n.child.once("exit", r));
  n.child.kill("SIGKILL");
  await done;
  n.child = null;
};
const [start, stop] = [() => startNode("A"), () => stopNode("A")];
const [startB, stopB] = [() => startNode("B"), () => stopNode("B")];
const healthy = async () => {
  for (let i = 0; i < 300; i++) {
    try { if ((await fetch(`${nodeUrl}/health`)).ok) return; } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`node not healthy; log:\n${fs.readFileSync(path.join(dir, "A.log"), "utf8").slice(-3000)}`);
};
const { ctx, cleanup } = await browser();
const errors = [];
let failed = false;
try {
  start();
  await healthy();
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("pageerror", (e) => errors.push(String(e)));
  const state = () => page.getAttribute('[data-testid="live-status"]', "data-state");
  const waitState = (s, timeout = 20000) =>
    page.waitForSelector(`[data-testid="live-status"][data-state="${s}"]`, { timeout });

  await page.goto(`${origin}/?live=${encodeURIComponent(nodeUrl)}`);
  await waitState("open");
  check(await page.isVisible('[data-testid="live"]'), "?live= opens the Live tab and attaches to the node");
  await page.waitForSelector('[data-testid="live-member-A"]', { timeout: 20000 });
  check((await page.textContent('[data-testid="live-member-A"]')).includes("up"), "the membership view lists A as up");
  await page.waitForSelector('[data-testid="live-hints-A"] >> text=0', { timeout: 20000 });
  check(true, "the hints column shows A's ringlab_hints_pending from its /metrics (0)");
  check((await page.locator('[data-testid="live-ring"] path').count()) >= 1, "the node's ring is drawn (partition arcs)");
  await page.fill('[data-testid="live-key"]', "greeting");
  const where = await page.textContent('[data-testid="live-key-replicas"]');
  check(/partition \d+, replicas A$/.test(where), `a typed key shows its partition and replicas (${where})`);
  check((await page.getAttribute('[data-testid="live-ring-node-A"]', "data-replica")) === "true", "the key's replica is marked on the ring");
  check(await page.isVisible('[data-testid="live-key-tick"]'), "the key's position is marked on the ring");

  const put = await fetch(`${nodeUrl}/kv/greeting`, { method: "PUT", body: "hello" });
  check(put.status === 204, `a write through the node's HTTP API (${put.status})`);
  await page.waitForSelector('[data-testid="live-log"] >> text=stored greeting', { timeout: 20000 });
  check(true, "the write appears in the live log as 'stored greeting'");
  check((await page.textContent('[data-testid="live-counts"]')).includes("stored"), "event counts by kind include stored");

  startB();
  await page.waitForSelector('[data-testid="live-member-B"]', { timeout: 30000 });
  check(true, "a second node joins and shows in the membership view");
  await page.waitForSelector('[data-testid="live-peers"][data-streams="2"]', { state: "attached", timeout: 20000 });
  check(true, "the tab also reads B's own sends (GET /events?peers=only on B)");
  await page.waitForSelector('[data-testid="live-flight"][data-from="B"][data-to="A"]', { state: "attached", timeout: 20000 });
  await page.waitForSelector('[data-testid="live-flight"][data-from="A"][data-to="B"]', { state: "attached", timeout: 20000 });
  const kinds = await page.$$eval('[data-testid="live-flight"]', (els) => [...new Set(els.map((e) => e.dataset.kind))]);
  check(true, `messages both ways between A and B are drawn as dots in flight (${kinds.join(", ")})`);
  // The dots move: some are part-way along their path (a translate, not the identity).
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="live-flight"]')]
    .some((e) => { const t = getComputedStyle(e).transform; return t !== "none" && t !== "matrix(1, 0, 0, 1, 0, 0)"; }), null, { timeout: 20000 });
  check(true, "the dots move from sender to receiver (CSS animation)");
  const peers = await page.textContent('[data-testid="live-peers"]');
  check(/peer messages: [1-9]/.test(peers), `peer messages are counted by kind (${peers.trim()})`);
  await page.screenshot({ path: path.join(artifacts, "live.png") });
  await stopB();

  await stop();
  await waitState("retrying");
  check(true, "a killed node shows as retrying");
  start();
  await healthy();
  await waitState("open", 30000);
  check(true, "the restarted node is reattached without a click");

  await page.click('[data-testid="live-disconnect"]');
  check((await state()) === "idle", "Disconnect closes the stream");
  check(errors.length === 0, `no page errors (${errors.join(" | ")})`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await stopB();
  await stop();
  await cleanup();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
