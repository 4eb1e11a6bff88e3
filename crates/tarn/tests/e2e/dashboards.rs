//! Dashboards written in YAML through the real binary: `--dashboard FILE.yaml`, YAML bodies
//! for create and update, YAML back from `GET` with `Accept: application/yaml`, and syntax
//! errors located by line and column.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::TestServer;

const YAML: &str = "\
# A dashboard written by hand.
name: from-file
title: From a file
params:
  - name: tag
    default: music
panels:
  - id: count
    title: Documents
    viz: number
    y: n
    sql: SELECT count(*) AS n FROM t WHERE tag = :tag
  - id: list
    title: Latest
    viz: table
    refresh_ms: 5000
    sql: |
      SELECT _id, tag
      FROM t
      ORDER BY _event_time DESC
      LIMIT 10
";

/// Sends `body` with `content_type`; returns the status and the body (JSON when it is).
fn send(s: &TestServer, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let agent = crate::support::agent();
    let url = s.url(path);
    let req = match method {
        "POST" => agent.post(&url),
        _ => agent.put(&url),
    };
    let mut resp = req
        .header("Content-Type", content_type)
        .send(body)
        .expect("the request reached tarn");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `GET` with an `Accept` header; returns the status, the content type and the text.
fn get_as(s: &TestServer, path: &str, accept: &str) -> (u16, String, String) {
    let mut resp = crate::support::agent()
        .get(s.url(path))
        .header("Accept", accept)
        .call()
        .expect("the request reached tarn");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        resp.status().as_u16(),
        ct,
        resp.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn dashboards_are_written_in_yaml_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("from-file.yml");
    std::fs::write(&file, YAML).unwrap();
    let s = TestServer::start(dir.path(), &["--dashboard", file.to_str().unwrap()]);

    // Loaded from the file, it reads back as JSON like any other dashboard.
    let (status, body) = s.get("/v1/orgs/self/dashboards/from-file");
    assert_eq!(status, 200, "{body}");
    let d = &body["data"];
    assert_eq!(d["title"], "From a file");
    assert_eq!(d["params"], json!([{"name": "tag", "default": "music"}]));
    assert_eq!(d["panels"][0]["refresh_ms"], 2000, "the default interval");
    assert_eq!(
        d["panels"][1]["sql"],
        "SELECT _id, tag\nFROM t\nORDER BY _event_time DESC\nLIMIT 10\n"
    );

    // Asked for YAML, GET answers the document itself in YAML, which PUT takes back.
    let (status, ct, yaml) = get_as(&s, "/v1/orgs/self/dashboards/from-file", "application/yaml");
    assert_eq!(status, 200, "{yaml}");
    assert_eq!(ct, "application/yaml");
    assert!(yaml.starts_with("name: from-file\n"), "{yaml}");
    let edited = yaml.replace("title: From a file", "title: Edited in YAML");
    assert_ne!(edited, yaml);
    let (status, body) = send(
        &s,
        "PUT",
        "/v1/orgs/self/dashboards/from-file",
        "text/yaml",
        &edited,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["title"], "Edited in YAML");
    let (_, body) = s.get("/v1/orgs/self/dashboards/from-file");
    assert_eq!(body["data"]["title"], "Edited in YAML");
    assert_eq!(
        body["data"]["panels"], d["panels"],
        "the panels did not change"
    );
    // JSON stays the default, and explicit.
    let (_, ct, text) = get_as(&s, "/v1/orgs/self/dashboards/from-file", "application/json");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["name"], "from-file");

    // Create from a YAML body (either YAML media type).
    let mine = YAML
        .replace("name: from-file", "name: mine")
        .replace("title: From a file", "title: Mine");
    let (status, body) = send(
        &s,
        "POST",
        "/v1/orgs/self/dashboards",
        "application/x-yaml; charset=utf-8",
        &mine,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["name"], "mine");
    let (status, body) = send(
        &s,
        "POST",
        "/v1/orgs/self/dashboards",
        "application/yaml",
        &mine,
    );
    assert_eq!(status, 409, "{body}");
    // A JSON body still works as before.
    let (status, body) = s.post(
        "/v1/orgs/self/dashboards",
        &json!({"name": "json-one", "panels": [
            {"id": "a", "title": "A", "sql": "SELECT 1 AS n", "viz": "number"}]}),
    );
    assert_eq!(status, 200, "{body}");

    // A YAML syntax error is a 400 that names the line and column.
    let broken = "name: broken\npanels:\n  - id: a\n    title: [unclosed\n    viz: table\n";
    let (status, body) = send(
        &s,
        "POST",
        "/v1/orgs/self/dashboards",
        "application/yaml",
        broken,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "INVALIDINPUT", "{body}");
    assert!(body["line"].as_u64().is_some_and(|l| l >= 4), "{body}");
    assert!(body["column"].as_u64().is_some(), "{body}");
    assert!(body["message"].as_str().unwrap().contains("line"), "{body}");
    // Valid YAML that is no dashboard says what is wrong.
    let (status, body) = send(
        &s,
        "POST",
        "/v1/orgs/self/dashboards",
        "application/yaml",
        "name: bad\npanels:\n  - {id: a, title: A, sql: SELECT 1, viz: pie}\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("pie"), "{body}");
    let (status, _) = s.get("/v1/orgs/self/dashboards/broken");
    assert_eq!(status, 404);

    // The YAML dashboards are stored like the others: a restart keeps them.
    drop(s);
    let s = TestServer::start(dir.path(), &[]);
    let (_, body) = s.get("/v1/orgs/self/dashboards/mine");
    assert_eq!(body["data"]["title"], "Mine");
    let (_, body) = s.get("/v1/orgs/self/dashboards/from-file");
    assert_eq!(body["data"]["title"], "Edited in YAML");
}

#[test]
fn a_broken_dashboard_file_stops_the_server_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("broken.yaml");
    std::fs::write(&file, "name: broken\npanels:\n\t- id: a\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--pg",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--dashboard")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server refused the file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("line 3"),
        "{stderr}"
    );
}
