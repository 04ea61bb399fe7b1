// End-to-end: runs guided scenario S1 by clicking the UI, asserts what the page
// shows at each step (A down, the hint at D, the handoff, three replicas again),
// goes back in time and asserts the earlier state; screenshots go to
// web/e2e/artifacts/ and one is copied to docs/screenshot-s1.png.
import fs from "node:fs";
import path from "node:path";
import { serve, browser, artifacts, root, check } from "./lib.mjs";

fs.mkdirSync(artifacts, { recursive: true });
const server = await serve();
const { port } = server.address();
const { ctx, cleanup } = await browser();
const errors = [];
let failed = false;
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector('[data-testid="preset-S1"]', { timeout: 30000 });
  const shot = (name) => page.screenshot({ path: path.join(artifacts, `${name}.png`) });
  const text = (id) => page.textContent(`[data-testid="${id}"]`);
  const attr = (id, a) => page.getAttribute(`[data-testid="${id}"]`, a);
  const waitStep = async (i) => {
    await page.waitForSelector(`[data-testid="guide-step"][data-step="${i}"]`, { timeout: 20000 });
    await page.waitForSelector('[data-testid="check"][data-pass="true"]', { timeout: 30000 });
    await page.waitForSelector('[data-testid="play"]:has-text("Play")', { timeout: 30000 }); // step's run finished
    console.log(`step ${i + 1}: ${(await text("check")).trim()}`);
  };
  const timeMs = async () => Math.round(parseFloat((await text("time")).replace(/[^0-9.]/g, "")) * 1000);

  await page.click('[data-testid="preset-S1"]');
  await waitStep(0);
  check((await text("guide-text")).includes("preference list A, B, C"), "S1 loaded: preference list A, B, C, D next");
  await page.click('[data-testid="node-B"]');
  check((await text("ring")).includes("view of B"), "selected node B: the ring shows B's view");
  await shot("s1-step1");

  await page.click('[data-testid="guide-next"]');
  await waitStep(1);
  check((await attr("guide-replicas", "data-count")) === "3", "first write: 3 replicas");
  check((await text("guide-replicas")).includes("A, B, C"), "replicas are A, B, C");

  await page.click('[data-testid="guide-next"]');
  await waitStep(2);
  check((await attr("node-A", "class")).includes("down"), "A is drawn as crashed");
  check((await attr("node-A", "data-status")) === "unreachable" || (await attr("node-A", "data-status")) === "dead-reported",
    "in the selected node's view A is unreachable");
  await shot("s1-step3");

  await page.click('[data-testid="guide-next"]');
  await waitStep(3);
  check((await text("guide-hints")).includes("D holds a hint for A"), "the write landed on D with a hint for A");
  check((await text("inv-hints")).trim() === "1", "invariants: 1 hint pending");
  await page.click('[data-testid="tab-Hints"]');
  await page.waitForSelector('[data-testid="hint-D-A"]', { timeout: 5000 });
  check(true, "hints panel: D holds a hint for A");
  const hintTime = (await timeMs()) - 200; // just before "next" restarted A
  await shot("s1-step4-hint-at-D");
  fs.mkdirSync(path.join(root, "docs"), { recursive: true });
  fs.copyFileSync(path.join(artifacts, "s1-step4-hint-at-D.png"), path.join(root, "docs", "screenshot-s1.png"));

  await page.click('[data-testid="guide-next"]');
  await waitStep(4);
  check((await text("check")).includes("D handed the hint off to A"), "A returned and D handed the hint off");
  await page.click('[data-testid="tab-Events"]');
  await page.fill('input[placeholder^="kind"]', "hint-delivered");
  await page.waitForSelector('.logrow:has-text("delivered its hint to A")', { timeout: 5000 });
  check(true, "event log shows D delivering its hint to A");
  await shot("s1-step5-handoff");

  await page.click('[data-testid="guide-next"]');
  await waitStep(5);
  check((await attr("guide-replicas", "data-count")) === "3", "three replicas again");
  check((await text("guide-replicas")).includes("A, B, C"), "…on A, B and C");
  check((await text("inv-hints")).trim() === "0", "no hints pending (D deleted its copy)");
  check((await attr("guide-hints", "data-count")) === "0", "no hint for the key anywhere");
  await page.click('[data-testid="tab-Hints"]');
  check((await text("hints")).includes("No node holds a hint"), "hints panel is empty");
  await shot("s1-step6-three-replicas");

  // Back in time: the scrubber to the moment the hint was at D.
  await page.$eval('[data-testid="scrubber"]', (el, v) => { el.value = String(v); el.dispatchEvent(new Event("change", { bubbles: true })); }, hintTime);
  await page.waitForSelector('[data-testid="guide-step"][data-step="3"]', { timeout: 10000 });
  check((await timeMs()) === hintTime, `scrubbed back to t = ${hintTime} ms`);
  check((await text("guide-hints")).includes("D holds a hint for A"), "after going back: D holds the hint again");
  await page.waitForSelector('[data-testid="hint-D-A"]', { timeout: 5000 });
  check((await text("inv-hints")).trim() === "1", "after going back: 1 hint pending");
  await shot("s1-back-in-time");

  // Step back one event (button) and with the keyboard (←).
  const ev = async () => parseInt((await page.textContent(".controls .muted")).replace(/[^0-9]/g, ""), 10);
  const before = await ev();
  await page.click('[data-testid="step-back"]');
  await page.waitForFunction((b) => parseInt(document.querySelector(".controls .muted").textContent.replace(/[^0-9]/g, ""), 10) === b - 1, before, { timeout: 10000 });
  check(true, `step back: event #${before} → #${before - 1}`);
  await page.keyboard.press("ArrowLeft");
  await page.waitForFunction((b) => parseInt(document.querySelector(".controls .muted").textContent.replace(/[^0-9]/g, ""), 10) === b - 2, before, { timeout: 10000 });
  check(true, "← steps back once more");
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction((b) => parseInt(document.querySelector(".controls .muted").textContent.replace(/[^0-9]/g, ""), 10) === b - 1, before, { timeout: 10000 });
  check(true, "→ steps forward one event");

  // The URL reproduces the run: open it in a new page.
  const url = page.url();
  check(url.includes("#s="), "the scenario is in the URL");
  const p2 = await ctx.newPage();
  p2.on("pageerror", (e) => errors.push(String(e)));
  await p2.goto(url);
  await p2.waitForSelector('[data-testid="guide-step"][data-step="3"]', { timeout: 30000 });
  check((await p2.textContent('[data-testid="guide-hints"]')).includes("D holds a hint for A"), "the link reopens the same moment (hint at D)");
  check(errors.length === 0, `no page errors (${errors.join(" | ")})`);
} catch (e) {
  failed = true;
  console.error(e);
  try { await ctx.pages()[0].screenshot({ path: path.join(artifacts, "s1-failure.png") }); } catch {}
  if (errors.length) console.error("page errors:", errors);
} finally {
  await cleanup();
  server.close();
}
console.log(failed ? "S1 end-to-end: FAILED" : "S1 end-to-end: passed");
process.exit(failed ? 1 : 0);
