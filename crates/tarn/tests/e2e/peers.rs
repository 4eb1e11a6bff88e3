//! Real peers the tests drive: kinesalite (an in-memory Kinesis on 127.0.0.1), the test
//! virtual environment's Python, and librdkafka's mock Kafka cluster. Each is stopped when
//! dropped; a missing one fails the test with the command that installs it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The checkout's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// kinesalite, started from node on a free loopback port.
pub struct Kinesalite {
    child: Child,
    pub endpoint: String,
}

impl Kinesalite {
    pub fn start() -> Kinesalite {
        let module = repo_root().join(".deps/node_modules/kinesalite");
        assert!(
            module.join("package.json").exists(),
            "kinesalite is not installed at {}: run scripts/test-deps",
            module.display()
        );
        let script = format!(
            "const s = require({:?})({{createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 100}});\
             s.listen(0, '127.0.0.1', () => console.log('kinesalite on ' + s.address().port));",
            module.display().to_string()
        );
        let mut child = Command::new("node")
            .args(["-e", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts (install nodejs)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("kinesalite on ") {
                    let _ = tx.send(port.to_owned());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kinesalite printed its port within 30 s");
        Kinesalite {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test virtual environment's Python (made by scripts/test-deps).
pub fn python() -> PathBuf {
    let p = repo_root().join(".venv-test/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-deps",
        p.display()
    );
    p
}

/// Runs a Python script from tests/e2e/py with arguments; fails the test on a non-zero exit.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/py")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
