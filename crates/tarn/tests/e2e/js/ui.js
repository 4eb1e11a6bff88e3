// Drives tarn's web UI in headless Chromium (Debian's chromium through playwright-core):
// the demo's Tweets view fills and its Incoming chart moves, a hashtag click opens the
// Hashtag view with its three panels filled, the console runs a query and shows an error
// at its line, and the form creates a collection. Saves screenshots; prints measurements
// as JSON on the last line. Usage: node ui.js BASE_URL SCREENSHOT_DIR PLAYWRIGHT_CORE_DIR
"use strict";
const [base, shots, pwDir] = process.argv.slice(2);
const { chromium } = require(pwDir);

function fail(msg) {
  console.error("FAIL: " + msg);
  process.exit(1);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const out = {};
  try {
    // One context: its tabs share the browser's connections to the server, as a user's do.
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => fail("page error: " + e.message));
    const rows = (sel) => page.$eval(sel, (el) => Number(el.dataset.rows || 0)).catch(() => 0);

    // The Tweets view: time to first data, then the Incoming chart moving.
    const started = Date.now();
    await page.goto(base + "/ui/#/d/tweets");
    await page.waitForFunction(() => {
      const b = document.querySelector("#panel-live-tweets .body");
      return b && Number(b.dataset.rows) > 0;
    }, null, { timeout: 15000 }).catch(() => fail("Live Tweets never filled"));
    out.first_data_ms = Date.now() - started;
    await page.waitForFunction(() => {
      const b = document.querySelector("#panel-top-hashtags .labels a.tag");
      return !!b;
    }, null, { timeout: 15000 }).catch(() => fail("Top Hashtags never filled"));
    const incoming = "#panel-incoming-tweets .body";
    await page.waitForFunction((s) => Number(document.querySelector(s).dataset.points || 0) > 0, incoming, { timeout: 15000 })
      .catch(() => fail("the Incoming chart has no points"));
    if (!(await page.$(incoming + " canvas"))) fail("the Incoming chart is not drawn");
    const lastX = await page.$eval(incoming, (el) => el.dataset.lastX);
    await page.waitForFunction(([s, x]) => document.querySelector(s).dataset.lastX !== x, [incoming, lastX], { timeout: 15000 })
      .catch(() => fail("the Incoming chart did not move"));
    const latency = await page.$eval("#panel-live-tweets .meta", (el) => el.textContent);
    if (!/query [0-9.]+ ms · newest document [0-9.]+ s ago/.test(latency)) fail("panel meta: " + latency);
    await page.screenshot({ path: shots + "/tweets-view.png", fullPage: true });

    // Click a hashtag: the Hashtag view's three panels fill.
    const tag = await page.$$eval("#panel-top-hashtags .labels a.tag", (as) => {
      const music = as.find((a) => a.textContent.startsWith("music "));
      return (music || as[0]).textContent.split(" ")[0];
    });
    await page.click(`#panel-top-hashtags .labels a.tag >> text=${tag}`);
    await page.waitForFunction((t) => location.hash.includes("hashtag=" + encodeURIComponent(t)), tag, { timeout: 5000 })
      .catch(() => fail("clicking #" + tag + " did not open the hashtag view"));
    for (const id of ["live-tweets", "related-hashtags", "influencers"]) {
      await page.waitForFunction((s) => {
        const b = document.querySelector(s);
        return b && Number(b.dataset.rows) > 0;
      }, `#panel-${id} .body`, { timeout: 15000 }).catch(() => fail(`hashtag view panel ${id} stayed empty for #${tag}`));
    }
    out.hashtag = tag;
    out.influencers = await rows("#panel-influencers .body");
    await page.screenshot({ path: shots + "/hashtag-view.png", fullPage: true });

    // More tabs of the same browser while this one stays open: Chromium keeps at most six
    // HTTP/1.1 connections per server, so views must not hold a connection per panel.
    const tabs = [];
    for (const view of ["#/d/tweets", "#/d/hashtag?hashtag=" + encodeURIComponent(tag), "#/d/tweets"]) {
      const tab = await context.newPage();
      tab.on("pageerror", (e) => fail("page error in another tab: " + e.message));
      await tab.goto(base + "/ui/" + view);
      tabs.push(tab);
    }
    for (const [i, tab] of tabs.entries()) {
      await tab.waitForFunction(() => {
        const bodies = [...document.querySelectorAll(".panel .body")];
        return bodies.length >= 3 && bodies.every((b) => Number(b.dataset.rows) > 0 || Number(b.dataset.points) > 0);
      }, null, { timeout: 15000 }).catch(() => fail(`tab ${i + 2} of 4 did not fill every panel`));
    }
    out.tabs = tabs.length + 1;
    for (const tab of tabs) await tab.close();

    // The console: a query with Ctrl+Enter, then an error shown at its line and column.
    await page.goto(base + "/ui/#/console");
    await page.fill("#sql", 'SELECT count(*) AS n FROM "twitter-kinesis-demo"');
    await page.press("#sql", "Control+Enter");
    await page.waitForSelector("#result-table td", { timeout: 10000 }).catch(() => fail("the console showed no result"));
    out.console_count = Number(await page.$eval("#result-table td", (td) => td.textContent));
    if (!(out.console_count > 0)) fail("the console count is " + out.console_count);
    await page.click("#json-tab");
    await page.waitForSelector("#result-json", { timeout: 5000 });
    await page.fill("#sql", "SELECT count(*)\nFROM latest_hashtags");
    await page.press("#sql", "Control+Enter");
    await page.waitForSelector("#query-error", { timeout: 10000 }).catch(() => fail("no error shown"));
    out.console_error = await page.$eval("#query-error", (el) => el.textContent);
    if (!out.console_error.startsWith("Line 2, column")) fail("error without its line: " + out.console_error);
    await page.screenshot({ path: shots + "/console.png", fullPage: true });

    // The form creates a collection.
    await page.goto(base + "/ui/#/collections/new");
    await page.waitForSelector("#new-name");
    await page.fill("#new-name", "made-in-the-ui");
    await page.click("#create");
    await page.waitForSelector("#schema", { timeout: 10000 }).catch(() => fail("the new collection's page did not open"));
    await page.goto(base + "/ui/#/collections");
    await page.waitForSelector("#collections a");
    const names = await page.$$eval("#collections a", (as) => as.map((a) => a.textContent));
    if (!names.includes("commons.made-in-the-ui")) fail("collections list: " + names.join(", "));
    await page.goto(base + "/ui/#/collections/commons/twitter-kinesis-demo");
    await page.waitForSelector("#schema td", { timeout: 10000 });
    out.schema_fields = await page.$$eval("#schema tbody tr", (trs) => trs.length);
    await page.screenshot({ path: shots + "/collection.png", fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})().catch((e) => fail(e.stack || String(e)));
