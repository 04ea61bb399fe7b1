// Frame time with 64 nodes and hundreds of messages in flight, and simulator
// speed in the page. Method: build a 64-node cluster (4 zones, Q=256) through the
// settings panel, set latency 50–200 ms and a heavy client workload (200 req/s)
// so hundreds of messages are in flight, play at 1×, then for DURATION ms record
// (a) requestAnimationFrame deltas, (b) the app's own per-frame work (simulation
// advance + render + DOM patch, performance.now() from the frame callback to
// `rendered`), (c) the in-flight count. Then the pure simulator speed in the page:
// bench_sim (core/benches/sim.rs's world: 64 nodes, busy and idle) timed with
// performance.now(), delivered messages per wall second.
import { serve, browser } from "./lib.mjs";

const DURATION = parseInt(process.env.DURATION || "10000", 10);
const server = await serve();
const { port } = server.address();
const { ctx, cleanup } = await browser();
const q = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector('[data-testid="tab-Settings"]');
  await page.click('[data-testid="tab-Settings"]');
  const field = (label) => page.locator(`label.field:has-text("${label}") input`);
  await field("nodes").fill("64");
  await field("zones").fill("4");
  await field("Q partitions").fill("256");
  await page.click('[data-testid="apply-settings"]');
  await page.click('[data-testid="tab-Faults"]');
  await page.fill('[data-testid="lat-min"]', "50");
  await page.fill('[data-testid="lat-max"]', "200");
  await page.click('[data-testid="net-set"]');
  await page.click('[data-testid="workload-heavy"]');
  if (!(await page.textContent('[data-testid="play"]')).includes("Pause")) await page.click('[data-testid="play"]');
  await page.waitForTimeout(3000); // warm up: traffic reaches its steady state
  const r = await page.evaluate(async (ms) => {
    window.__ringlabWork.length = 0;
    const deltas = [], inflight = [];
    let last = performance.now();
    const t0 = last;
    await new Promise((done) => {
      const tick = (t) => {
        deltas.push(t - last); last = t;
        const txt = document.querySelector('[data-testid="inflight"]')?.textContent || "0";
        inflight.push(parseInt(txt, 10));
        if (t - t0 < ms) requestAnimationFrame(tick); else done();
      };
      requestAnimationFrame(tick);
    });
    const virt = document.querySelector('[data-testid="time"]').textContent;
    return { deltas, work: [...window.__ringlabWork], inflight, virt };
  }, DURATION);
  const fmt = (x) => x.toFixed(2);
  console.log(`64 nodes, ${DURATION / 1000} s at 1×: ${r.deltas.length} frames (${fmt(r.deltas.length / (DURATION / 1000))} fps), virtual clock now ${r.virt}`);
  console.log(`  rAF delta ms: median ${fmt(q(r.deltas, 0.5))}, p95 ${fmt(q(r.deltas, 0.95))}, max ${fmt(Math.max(...r.deltas))}`);
  console.log(`  app work per frame ms (sim + render + DOM): median ${fmt(q(r.work, 0.5))}, p95 ${fmt(q(r.work, 0.95))} over ${r.work.length} frames`);
  console.log(`  messages in flight: median ${q(r.inflight, 0.5)}, min ${Math.min(...r.inflight)}, max ${Math.max(...r.inflight)}`);
  // Pure simulation speed in the page (the module instance the page already loaded).
  await page.click('[data-testid="play"]'); // pause the app
  for (const [nodes, busy, secs] of [[64, true, 3], [64, false, 30], [7, true, 3]]) {
    const [delivered, wall, virtual] = await page.evaluate(async ([n, b, s]) => {
      const m = await import("/ringlab_web.js");
      m.bench_sim(n, b, 1); // warm-up
      return Array.from(m.bench_sim(n, b, s));
    }, [nodes, busy, secs]);
    console.log(`  sim in page, ${nodes} nodes ${busy ? "busy" : "idle"}: ${(delivered / wall / 1000).toFixed(3)} M delivered msgs/s, ${(virtual / wall).toFixed(1)} virtual ms per wall ms`);
  }
  // 1000 nodes, reduced drawing (dots, no labels, at most 300 messages drawn).
  await page.click('[data-testid="tab-Settings"]');
  await field("nodes").fill("1000");
  await field("Q partitions").fill("1024");
  const t0 = Date.now();
  await page.click('[data-testid="apply-settings"]');
  await page.waitForSelector('text=1000 nodes', { timeout: 60000 });
  const built = Date.now() - t0;
  if (!(await page.textContent('[data-testid="play"]')).includes("Pause")) await page.click('[data-testid="play"]');
  await page.waitForTimeout(1000);
  const big = await page.evaluate(async (ms) => {
    window.__ringlabWork.length = 0;
    const v0 = parseFloat(document.querySelector('[data-testid="time"]').textContent.replace(/[^0-9.]/g, ""));
    const deltas = []; let last = performance.now(); const t0 = last;
    await new Promise((done) => { const tick = (t) => { deltas.push(t - last); last = t; if (t - t0 < ms) requestAnimationFrame(tick); else done(); }; requestAnimationFrame(tick); });
    const v1 = parseFloat(document.querySelector('[data-testid="time"]').textContent.replace(/[^0-9.]/g, ""));
    return { deltas, work: [...window.__ringlabWork], virt: v1 - v0 };
  }, 5000);
  console.log(`1000 nodes (Q=1024, reduced drawing), built in ${built} ms; 5 s at 1×: ${big.deltas.length} frames, rAF median ${fmt(q(big.deltas, 0.5))} ms, work median ${fmt(q(big.work, 0.5))} ms p95 ${fmt(q(big.work, 0.95))} ms, virtual time advanced ${big.virt.toFixed(2)} s`);
  if (errors.length) { console.error("page errors:", errors); process.exitCode = 1; }
} finally {
  await cleanup();
  server.close();
}
