// Random click sequences (seeded): every button, node, tab, preset, the scrubber
// and the ring, for CLICKS clicks; fails if the page logs an error or the panic
// banner appears. `SEED=n CLICKS=m node web/e2e/clicks.mjs`.
import { serve, browser, check } from "./lib.mjs";

let seed = parseInt(process.env.SEED || "1", 10);
const CLICKS = parseInt(process.env.CLICKS || "300", 10);
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const server = await serve();
const { port } = server.address();
const { ctx, cleanup } = await browser();
let failed = false;
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector('[data-testid="ring"]');
  // Bad input gives a readable error, never a panic.
  await page.click('[data-testid="tab-Settings"]');
  for (const [label, v] of [["nodes", "0"], ["Q partitions", "3"], ["N", "99"], ["R", "x"], ["nodes", "2000"]]) {
    const f = page.getByLabel(label, { exact: label.length < 3 }).first();
    const old = await f.inputValue();
    await f.fill(v);
    await page.click('[data-testid="apply-settings"]');
    await page.waitForSelector('[data-testid="error"]', { timeout: 5000 });
    console.log(`  settings ${label}=${v}: ${(await page.textContent('[data-testid="error"]')).replace("×", "").trim()}`);
    await f.fill(old);
  }
  const p2 = await ctx.newPage();
  p2.on("pageerror", (e) => errors.push(String(e)));
  await p2.goto(`http://127.0.0.1:${port}/#s=AAAAAAAA`);
  await p2.waitForSelector('[data-testid="error"]', { timeout: 10000 });
  console.log(`  damaged link: ${(await p2.textContent('[data-testid="error"]')).replace("×", "").trim()}`);
  await p2.close();
  for (let i = 0; i < CLICKS && errors.length === 0; i++) {
    const r = rnd();
    if (r < 0.08) {
      const max = parseInt(await page.getAttribute('[data-testid="scrubber"]', "max"), 10);
      await page.$eval('[data-testid="scrubber"]', (el, v) => { el.value = String(v); el.dispatchEvent(new Event("change", { bubbles: true })); }, Math.floor(rnd() * max));
    } else if (r < 0.15) {
      await page.keyboard.press(["Space", "ArrowRight", "ArrowLeft"][Math.floor(rnd() * 3)]);
    } else if (r < 0.25) {
      const box = await page.locator('[data-testid="ring"]').boundingBox();
      await page.mouse.click(box.x + rnd() * box.width, box.y + rnd() * box.height);
    } else {
      // Live's Connect is left out: with no node to attach to, the browser itself
      // logs the refused connection as a console error (live.mjs tests that tab).
      const targets = await page.$$('button:not([disabled]):not([data-testid="live-connect"]), [data-testid^="node-"]');
      const t = targets[Math.floor(rnd() * targets.length)];
      const label = ((await t.textContent()) || "").trim();
      if (label === "Build cluster" && rnd() < 0.7) continue; // keep small clusters mostly
      await t.click({ timeout: 5000 }).catch(() => {});
    }
    await page.waitForTimeout(rnd() < 0.1 ? 300 : 20);
    if (await page.isVisible("#panic")) errors.push(await page.textContent("#panic"));
  }
  check(errors.length === 0, `${CLICKS} random clicks without an error (${errors.join(" | ")})`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await cleanup();
  server.close();
}
process.exit(failed ? 1 : 0);
