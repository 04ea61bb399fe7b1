// 1000 nodes in the page: simulation speed and frame rate. Method: build the
// cluster through the settings panel (1000 nodes, 4 zones, Q = 1024, the form's
// 10 req/s workload; reduced drawing), pick a speed (SPEED index into SPEEDS,
// default 9 = 100×, i.e. as fast as the frame budget allows) and play from
// t = 0 for DURATION ms. The app records per frame (frame_stats(), exported by
// the wasm): simulation ms, render ms, virtual ms advanced, events. Reported:
// the virtual clock against wall time (every second), fps, medians.
import { serve, browser } from "./lib.mjs";

const DURATION = parseInt(process.env.DURATION || "20000", 10);
const SPEED = process.env.SPEED || "9";
const server = await serve(process.env.DIST || undefined);
const { port } = server.address();
const { ctx, cleanup } = await browser();
const q = (a, p) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };
const fmt = (x) => x.toFixed(2);
// Virtual s per wall s from the first frame past virtual 2 s to the end.
const steady = (r) => {
  let v = 0, i0 = -1, v0 = 0;
  r.forEach((f, i) => { v += f[3]; if (i0 < 0 && v >= 2000) { i0 = i; v0 = v; } });
  if (i0 < 0 || i0 === r.length - 1) return "not reached";
  return `${((v - v0) / (r[r.length - 1][0] - r[i0][0])).toFixed(2)} virtual s per wall s`;
};
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector('[data-testid="tab-Settings"]');
  if ((await page.textContent('[data-testid="play"]')).includes("Pause")) await page.click('[data-testid="play"]');
  await page.click('[data-testid="tab-Settings"]');
  const field = (label) => page.locator(`label.field:has-text("${label}") input`);
  await field("nodes").fill("1000");
  await field("zones").fill("4");
  await field("Q partitions").fill("1024");
  const t0 = Date.now();
  await page.click('[data-testid="apply-settings"]');
  await page.waitForSelector('text=1000 nodes', { timeout: 60000 });
  const built = Date.now() - t0;
  await page.selectOption('[data-testid="speed"]', SPEED);
  await page.evaluate(async () => { const m = await import("/ringlab_web.js"); m.frame_stats(); });
  await page.click('[data-testid="play"]');
  const r = await page.evaluate(async (ms) => {
    const m = await import("/ringlab_web.js");
    const frames = [];
    const start = performance.now();
    await new Promise((done) => {
      const tick = () => {
        const s = m.frame_stats();
        for (let i = 0; i + 4 < s.length; i += 5) frames.push([s[i], s[i + 1], s[i + 2], s[i + 3], s[i + 4]]);
        if (performance.now() - start < ms) setTimeout(tick, 200); else done();
      };
      tick();
    });
    return frames;
  }, DURATION);
  // Virtual clock per wall second, from the frames' rAF timestamps.
  const first = r[0][0];
  let virt = 0, events = 0, sec = 1;
  const line = [];
  for (const f of r) {
    while (f[0] - first >= sec * 1000) { line.push(`${sec}s:${(virt / 1000).toFixed(2)}`); sec++; }
    virt += f[3]; events += f[4];
  }
  const wall = (r[r.length - 1][0] - first) / 1000;
  const deltas = r.slice(1).map((f, i) => f[0] - r[i][0]);
  const rendered = r.filter((f) => f[2] > 0).map((f) => f[2]);
  console.log(`1000 nodes (Q=1024, reduced drawing), built in ${built} ms, speed index ${SPEED}, ${fmt(wall)} wall s from t = 0:`);
  console.log(`  virtual clock (wall s: virtual s): ${line.join(" ")}; end ${(virt / 1000).toFixed(2)} virtual s, ${events} events`);
  console.log(`  ${r.length} frames (${fmt(r.length / wall)} fps), rAF delta median ${fmt(q(deltas, 0.5))} p95 ${fmt(q(deltas, 0.95))} max ${fmt(Math.max(...deltas))} ms`);
  console.log(`  simulation per frame ms: median ${fmt(q(r.map((f) => f[1]), 0.5))} p95 ${fmt(q(r.map((f) => f[1]), 0.95))} max ${fmt(Math.max(...r.map((f) => f[1])))}`);
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  console.log(`  share of wall time: simulation ${(sum(r.map((f) => f[1])) / 10 / wall).toFixed(0)} %, render ${(sum(rendered) / 10 / wall).toFixed(0)} %; after the start-up (from virtual 2 s): ${steady(r)}`);
  console.log(`  render (${rendered.length} frames) ms: median ${fmt(q(rendered, 0.5))} p95 ${fmt(q(rendered, 0.95))} max ${fmt(Math.max(...rendered))}`);
  if (errors.length) { console.error("page errors:", errors); process.exitCode = 1; }
} finally {
  await cleanup();
  server.close();
}
