// Drives the browser example (examples/web) in headless Chromium with puppeteer-core, for tests/test_web.py.
//
//   node tests/web_driver.mjs config.json     -> one JSON line on stdout: a result per step
//
// config: {chromium, url, steps: [...]}; each step opens a fresh page and does what it names:
//   {model, batch: {file, n}, upload, draw, screenshot}
//                                                  page url?model=<model>; classifyBatch on the n images in
//                                                  `file` (raw uint8); the file chooser given `upload`;
//                                                  a mouse stroke on the canvas; a screenshot of the page
//   {html}                                          a page of its own at url + "snippet.html" (served by the
//                                                  driver), whose console lines are returned
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'examples', 'web', 'package.json'));
const puppeteer = require('puppeteer-core');

const TIMEOUT = 60_000;

async function pageStep(browser, cfg, step) {
  const page = await browser.newPage();
  await page.setViewport({ width: 980, height: 640 });
  const errors = [];
  const consoleLines = [];
  page.on('pageerror', (e) => errors.push(String(e.message || e).split('\n')[0]));
  page.on('console', (m) => {
    if (m.type() !== 'error') consoleLines.push(m.text());
    else if (!m.text().startsWith('Failed to load resource')) errors.push(m.text()); // named below, with its URL
  });
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) errors.push(`HTTP ${r.status()} ${r.url()}`);
  });
  const out = { errors, console: consoleLines };
  if (step.html) {
    await page.setRequestInterception(true);
    page.on('request', (r) => (r.url() === `${cfg.url}snippet.html`
      ? r.respond({ status: 200, contentType: 'text/html', body: step.html }) : r.continue()));
    await page.goto(`${cfg.url}snippet.html`);
    const t0 = Date.now();
    while (!consoleLines.length && !errors.length && Date.now() - t0 < TIMEOUT) {
      await new Promise((res) => setTimeout(res, 50));
    }
    await page.close();
    return out;
  }
  await page.goto(`${cfg.url}?model=${encodeURIComponent(step.model)}`);
  out.model = await page.evaluate(async () => {
    await window.lenet.ready;
    const m = window.lenet.model;
    return { name: m.name, classes: m.classes, h: m.h, w: m.w, c: m.c };
  });
  if (step.batch) {
    const b64 = fs.readFileSync(step.batch.file).toString('base64');
    const t = Date.now();
    out.logits = await page.evaluate((s, n) => window.classifyBatch(Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0)), n),
                                     b64, step.batch.n);
    out.batch_ms = Date.now() - t;
  }
  if (step.upload) {
    const input = await page.$('#file');
    await input.uploadFile(step.upload);
    await page.waitForFunction(() => document.body.dataset.results === '1' || document.body.dataset.state === 'error',
                               { timeout: TIMEOUT });
    out.shown = await page.$$eval('#top li', (lis) => lis.map((li) => ({
      name: li.querySelector('.name').textContent, percent: parseFloat(li.querySelector('.p').textContent) })));
    out.source = await page.$eval('#source', (e) => e.textContent);
  }
  if (step.draw) { // a stroke with the mouse on the drawing canvas: classified when the button is released
    const before = await page.evaluate(() => Number(document.body.dataset.results || 0));
    const box = await (await page.$('#draw')).boundingBox();
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.2);
    await page.mouse.down();
    for (const [fx, fy] of [[0.3, 0.8], [0.7, 0.8], [0.7, 0.2]]) {
      await page.mouse.move(box.x + box.width * fx, box.y + box.height * fy, { steps: 8 });
    }
    await page.mouse.up();
    await page.waitForFunction((n) => Number(document.body.dataset.results) > n, { timeout: TIMEOUT }, before);
    out.drawn = await page.$$eval('#top li .name', (els) => els.map((e) => e.textContent));
    out.drawnSource = await page.$eval('#source', (e) => e.textContent);
  }
  out.status = await page.$eval('#status', (e) => e.textContent);
  out.about = await page.$eval('#about', (e) => e.textContent);
  if (step.screenshot) await page.screenshot({ path: step.screenshot });
  await page.close();
  return out;
}

async function main() {
  const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const args = ['--headless=new', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'];
  if (process.getuid?.() === 0) args.push('--no-sandbox'); // Chromium refuses to run as root with its sandbox
  const browser = await puppeteer.launch({ executablePath: cfg.chromium, args, headless: true, timeout: TIMEOUT,
                                           protocolTimeout: 4 * TIMEOUT });
  try {
    const results = [];
    for (const step of cfg.steps) results.push(await pageStep(browser, cfg, step));
    process.stdout.write(`${JSON.stringify(results)}\n`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`web_driver: ${String(e.message || e).split('\n')[0]}\n`);
  process.exit(1);
});
