// Shared helpers: serve dist/ on a free port with node's http, launch Debian's
// Chromium through playwright-core (no browser download).
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "..", "..");
export const dist = path.join(root, "dist");
export const artifacts = path.join(here, "artifacts");

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css" };

export function serve(dir = dist) {
  if (!fs.existsSync(path.join(dir, "index.html"))) {
    throw new Error(`${dir}/index.html missing: run web/serve.sh --build-only first`);
  }
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const file = path.join(dir, url.pathname === "/" ? "index.html" : path.normalize(url.pathname));
    if (!file.startsWith(dir) || !fs.existsSync(file)) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

export const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

export async function browser() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ringlab-e2e-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/lib/chromium/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
  });
  return { ctx, cleanup: async () => { await ctx.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

export function check(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
  console.log(`  ✔ ${what}`);
}
