// Headless-Chromium check of the web viewer: node tools/browser_test.mjs URL OUT.png [CHROMIUM] [PHOTO]
// Opens the page, presses Generate, waits for the head to load, saves a screenshot of the canvas and
// prints JSON {loaded, vertexCount, error, generatedOption, console} on stdout; with PHOTO it then reconstructs
// that photo and adds {reconstructed, notes, status} (the viewer's status line). Exits 1 if a face did not load.
import { chromium } from "playwright-core";

const [url, out, executablePath = "/usr/bin/chromium", photo] = process.argv.slice(2);
if (!url || !out) { console.error("usage: node tools/browser_test.mjs URL OUT.png [CHROMIUM]"); process.exit(2); }
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const logs = [];
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: "load" });
  await page.fill("#seed", "5");
  await page.click("#generate");
  await page.waitForFunction(() => window.viewerState && (window.viewerState.loaded || window.viewerState.error),
                             null, { timeout: 120000 });
  await page.waitForTimeout(500); // a few animation frames
  await page.locator("#canvas").screenshot({ path: out });
  const state = await page.evaluate(() => window.viewerState);
  // /reconstruct's albedo choice: the "generated" option is enabled where /models lists it
  const generatedOption = await page.evaluate(
    () => !document.querySelector('#albedo-source option[value="generated"]').disabled);
  let reconstructed = {};
  if (photo && state.loaded) {
    await page.setInputFiles("#photo", photo);
    await page.evaluate(() => { window.viewerState.loaded = false; });
    await page.click("#reconstruct");
    await page.waitForFunction(() => window.viewerState.loaded || window.viewerState.error, null, { timeout: 120000 });
    const after = await page.evaluate(() => window.viewerState);
    reconstructed = { reconstructed: after.loaded, notes: after.notes, status: await page.textContent("#status") };
  }
  console.log(JSON.stringify({ ...state, generatedOption, ...reconstructed, console: logs }));
  process.exitCode = state.loaded && (!photo || reconstructed.reconstructed) ? 0 : 1;
} catch (err) {
  console.log(JSON.stringify({ loaded: false, error: String(err), console: logs }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
