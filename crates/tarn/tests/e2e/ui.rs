//! The web UI and live dashboards: the demo driven in headless Chromium, a view's live stream,
//! and viewers of one panel sharing one query feed.

use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::peers::repo_root;
use crate::support::TestServer;

fn wait_for_tweets(s: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, body) = s.post(
            "/v1/orgs/self/queries",
            &serde_json::json!({"sql": {"query": "SELECT count(*) AS n FROM \"twitter-kinesis-demo\""}}),
        );
        if st == 200 && body["results"][0]["n"].as_i64().unwrap_or(0) > 300 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the demo stream stored nothing: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn demo_dashboard_console_and_form_in_chromium() {
    let pw = repo_root().join(".deps/node_modules/playwright-core");
    assert!(
        pw.join("package.json").exists(),
        "playwright-core is missing: run scripts/test-deps"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run scripts/test-deps"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_command("demo", dir.path(), &["--rate", "200"]);
    wait_for_tweets(&s);
    let shots = repo_root().join("test-artifacts/ui");
    std::fs::create_dir_all(&shots).unwrap();
    let script = repo_root().join("crates/tarn/tests/e2e/js/ui.js");
    let out = Command::new("node")
        .arg(&script)
        .arg(&s.base)
        .arg(&shots)
        .arg(&pw)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("ui: {report}");
    assert!(report["console_count"].as_i64().unwrap() > 0);
    assert_eq!(report["tabs"], 4, "{report}");
    assert!(report["schema_fields"].as_i64().unwrap() > 20, "{report}");
    let (st, _) = s.get("/v1/orgs/self/ws/commons/collections/made-in-the-ui");
    assert_eq!(st, 200, "the form created the collection");
    for shot in [
        "tweets-view.png",
        "hashtag-view.png",
        "console.png",
        "collection.png",
    ] {
        assert!(
            shots.join(shot).metadata().unwrap().len() > 10_000,
            "{shot}"
        );
    }
}

/// Opens an SSE stream and returns once its first event arrived; the connection stays open
/// while the returned reader lives.
fn open_viewer(url: &str) -> Box<dyn Read + Send> {
    let agent = crate::support::agent();
    let resp = agent.get(url).call().expect("the live endpoint answers");
    assert_eq!(resp.status(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line.starts_with("data:") {
            let v: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
            assert!(v["results"].is_array(), "{v}");
            return Box::new(reader);
        }
    }
}

/// Reads one server-sent event: (name, data as JSON).
fn next_event(reader: &mut impl BufRead) -> (String, Value) {
    let mut name = "message".to_owned();
    let mut data: Option<String> = None;
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let l = line.trim_end();
        if l.is_empty() {
            if let Some(d) = data.take() {
                return (name, serde_json::from_str(&d).unwrap());
            }
            name = "message".to_owned();
        } else if let Some(n) = l.strip_prefix("event:") {
            name = n.trim().to_owned();
        } else if let Some(d) = l.strip_prefix("data:") {
            data = Some(d.trim().to_owned());
        }
    }
}

#[test]
fn a_view_streams_its_document_then_every_panel_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_command("demo", dir.path(), &["--rate", "200"]);
    wait_for_tweets(&s);
    let agent = crate::support::agent();
    let resp = agent
        .get(&s.url("/v1/orgs/self/dashboards/hashtag/live?hashtag=music"))
        .call()
        .expect("the view's stream answers");
    assert_eq!(resp.status(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let (name, head) = next_event(&mut reader);
    assert_eq!(name, "dashboard", "{head}");
    assert_eq!(head["dashboard"]["name"], "hashtag", "{head}");
    assert_eq!(head["params"]["hashtag"], "music", "{head}");
    let mut waiting: std::collections::BTreeSet<String> = head["dashboard"]["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(waiting.len(), 3, "{head}");
    while !waiting.is_empty() {
        let (name, ev) = next_event(&mut reader);
        assert_eq!(name, "panel", "{ev}");
        assert!(ev["results"].is_array(), "{ev}");
        waiting.remove(ev["panel"].as_str().unwrap());
    }
    // The view's panels run as feeds bound to its parameter, as the per-panel feeds do.
    let (_, stats) = s.get("/v1/orgs/self/live/stats");
    let feeds = stats["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 3, "{stats}");
    for f in feeds {
        assert_eq!(f["dashboard"], "hashtag", "{stats}");
        assert_eq!(f["params"][0]["hashtag"], "music", "{stats}");
        assert_eq!(f["viewers"], 1, "{stats}");
    }
    // An unknown view is refused before any event, with the reason.
    let (st, body) = s.get("/v1/orgs/self/dashboards/no-such-view/live");
    assert_eq!(st, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no-such-view"),
        "{body}"
    );
}

#[test]
fn viewers_of_a_panel_share_one_query_feed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_command("demo", dir.path(), &["--rate", "200"]);
    wait_for_tweets(&s);
    let url = s.url("/v1/orgs/self/dashboards/tweets/panels/live-tweets/live");
    let started = Instant::now();
    let viewers: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || open_viewer(&url))
        })
        .collect();
    let viewers: Vec<_> = viewers.into_iter().map(|t| t.join().unwrap()).collect();
    std::thread::sleep(Duration::from_secs(5));
    let (_, stats) = s.get("/v1/orgs/self/live/stats");
    let elapsed = started.elapsed().as_secs_f64();
    let feeds = stats["feeds"].as_array().unwrap();
    let feed = feeds
        .iter()
        .find(|f| f["panel"] == "live-tweets")
        .unwrap_or_else(|| panic!("no feed: {stats}"));
    assert_eq!(feed["viewers"], 40, "{stats}");
    // One run per 2-second interval for all 40 viewers (plus the first), not 40 per interval.
    let runs = feed["runs"].as_u64().unwrap();
    assert!(
        runs as f64 <= elapsed / 2.0 + 2.0,
        "{runs} runs in {elapsed:.1} s for 40 viewers: {stats}"
    );
    drop(viewers);
    // With every viewer gone the feed stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = s.get("/v1/orgs/self/live/stats");
        if stats["feeds"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "feeds kept running: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
