//! `TestServer`: starts the real binary on port 0, waits for `/health`, kills it on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct TestServer {
    child: Child,
    pub base: String,
    /// The Postgres endpoint's address, when the server printed one.
    pub pg: Option<String>,
    agent: ureq::Agent,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl TestServer {
    /// Starts `tarn serve` on a free port with `data_dir`; panics (fails the test) if it
    /// does not become healthy within 60 s.
    pub fn start(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::start_command("serve", data_dir, extra)
    }

    /// Starts `tarn COMMAND` (`serve` or `demo`) like [`TestServer::start`].
    pub fn start_command(command: &str, data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::start_with_env(command, data_dir, extra, &[])
    }

    /// [`TestServer::start_command`] with extra environment variables for the server.
    pub fn start_with_env(
        command: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tarn"))
            .envs(env.iter().copied())
            .args([command, "--data-dir"])
            .arg(data_dir)
            .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
            .args(extra)
            // TARN_TEST_LOG=debug,librdkafka=debug shows what a failing server was doing.
            .env(
                "RUST_LOG",
                std::env::var("TARN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tarn binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tarn pg listening on ") {
                    let _ = tx.send(format!("pg {addr}"));
                } else if let Some(addr) = line.strip_prefix("tarn listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tarn printed its address within 60 s");
        // The Postgres address is printed right after the HTTP one.
        let pg = rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|l| l.strip_prefix("pg ").map(str::to_owned));
        let server = TestServer {
            child,
            base,
            pg,
            agent: agent(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.agent.get(format!("{}/health", server.base)).call()
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "tarn did not become healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn read(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        let mut resp = resp.expect("the request reached tarn");
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .expect("body is text");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::read(
            self.agent
                .post(self.url(path))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        Self::read(
            self.agent
                .post(self.url(path))
                .header("Content-Type", "application/json")
                .send(&body[..]),
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::read(self.agent.get(self.url(path)).call())
    }

    pub fn delete(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        match body {
            Some(b) => Self::read(
                self.agent
                    .delete(self.url(path))
                    .force_send_body()
                    .header("Content-Type", "application/json")
                    .send(b.to_string()),
            ),
            None => Self::read(self.agent.delete(self.url(path)).call()),
        }
    }

    /// Runs a query and returns its `results`, failing the test on an error.
    pub fn query(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.post("/v1/orgs/self/queries", &json!({"sql": {"query": sql}}));
        assert_eq!(status, 200, "query {sql} failed: {body}");
        body["results"].as_array().expect("results").clone()
    }

    pub fn create_collection(&self, ws: &str, body: Value) {
        let (status, resp) = self.post(&format!("/v1/orgs/self/ws/{ws}/collections"), &body);
        assert_eq!(status, 200, "{resp}");
    }

    /// Adds documents and returns the per-document statuses.
    pub fn add_docs(&self, ws: &str, coll: &str, docs: &[Value]) -> Vec<Value> {
        let (status, resp) = self.post(
            &format!("/v1/orgs/self/ws/{ws}/collections/{coll}/docs"),
            &json!({"data": docs}),
        );
        assert_eq!(status, 200, "{resp}");
        resp["data"].as_array().unwrap().clone()
    }

    /// SIGKILL: the server gets no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "tarn did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tarn ARGS...` to completion; fails the test (with its stderr) unless it succeeds.
/// Returns its stdout.
pub fn run_tarn(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(args)
        .output()
        .expect("the tarn binary runs");
    assert!(
        out.status.success(),
        "tarn {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tarn prints UTF-8")
}

/// The shared data folder (`../shared/data` next to the checkout).
pub fn shared_data(file: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let p = root.join("shared/data").join(file);
    assert!(
        p.exists(),
        "{} is missing: the tests need ../shared/data next to the checkout",
        p.display()
    );
    p
}

/// A document without the fields tarn adds, for comparison with what was written.
pub fn strip_generated(mut row: Value) -> Value {
    let o = row.as_object_mut().unwrap();
    o.remove("_event_time");
    o.remove("_meta");
    row
}

/// Polls `sql`'s first value until it equals `want` (or fails after `secs`).
pub fn wait_for_count(s: &TestServer, sql: &str, want: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let rows = s.query(sql);
        last = rows[0]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
        if last.as_i64() == Some(want) {
            return;
        }
        assert!(
            last.as_i64().is_some_and(|n| n < want),
            "{sql} gave {last}, more than {want}: records were stored twice"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{sql} gave {last}, not {want}, after {secs} s");
}

pub fn source_status(s: &TestServer, coll: &str) -> Value {
    let (st, body) = s.get(&format!("/v1/orgs/self/ws/commons/collections/{coll}"));
    assert_eq!(st, 200, "{body}");
    body["data"]["sources"][0]["status"].clone()
}

pub fn wait_for_state(s: &TestServer, coll: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = source_status(s, coll);
        if status["state"] == state {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "source never reached {state}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
