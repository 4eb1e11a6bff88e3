// The original dashboard's request from a page on another origin: a browser POST to
// /v1/orgs/self/queries with `Authorization: ApiKey ...`, reading `results` and
// `stats.elapsed_time_ms`. Serves the page itself on 127.0.0.1 (another port is another
// origin) and prints what the page read as JSON. Usage: node cors.js TARN_URL KEY PW_DIR
"use strict";
const http = require("http");
const [tarn, key, pwDir] = process.argv.slice(2);
const { chromium } = require(pwDir);

const page = `<!doctype html><html><body><script>
fetch(${JSON.stringify(tarn)} + "/v1/orgs/self/queries", {
  method: "POST",
  headers: { "Authorization": "ApiKey " + ${JSON.stringify(key)}, "Content-Type": "application/json" },
  body: JSON.stringify({ sql: { query: "SELECT count(*) AS n FROM events" } }),
}).then((r) => r.json()).then((v) => {
  document.body.dataset.n = v.results[0].n;
  document.body.dataset.ms = v.stats.elapsed_time_ms;
}).catch((e) => { document.body.dataset.err = String(e); });
</script></body></html>`;

const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "text/html");
  res.end(page);
});
server.listen(0, "127.0.0.1", async () => {
  const origin = "http://127.0.0.1:" + server.address().port;
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  try {
    const p = await browser.newPage();
    await p.goto(origin + "/");
    await p.waitForFunction(() => document.body.dataset.n || document.body.dataset.err, null, { timeout: 15000 });
    const out = await p.evaluate(() => ({ ...document.body.dataset }));
    out.origin = origin;
    console.log(JSON.stringify(out));
  } finally {
    await browser.close();
    server.close();
  }
});
