//! The Postgres endpoint against real clients: psql (queries, `\dt`, `\d TABLE`), psycopg 3
//! and SQLAlchemy 2's reflection, with the API key as the password; TLS with a certificate
//! made by the `openssl` command, SCRAM-SHA-256 (and -PLUS) for user names that name a key,
//! and cancel requests that stop a running query.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::peers::repo_root;
use crate::rockset_clients::create_key;
use crate::support::TestServer;

/// The Postgres address the server printed.
fn pg_port(s: &TestServer) -> String {
    s.pg.clone()
        .expect("tarn printed its Postgres address")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn psql_and_psycopg_query_through_the_postgres_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "pg");
    let s = TestServer::start(dir.path(), &[]);
    let agent = crate::support::agent();
    let auth = format!("ApiKey {key}");
    for (path, body) in [
        (
            "/v1/orgs/self/ws/commons/collections",
            json!({"name": "events"}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections",
            json!({"name": "twitter-kinesis-demo"}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections/twitter-kinesis-demo/docs",
            json!({"data": [
                {"id": 7, "text": "hello", "user": {"screen_name": "ada"}, "retweeted": false, "created_at": "2026-11-25T10:00:00Z"},
                {"id": "8", "text": "again", "user": {"screen_name": "bob"}, "retweeted": true, "created_at": "2026-11-25T10:01:00Z"}]}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections/events/docs",
            json!({"data": [
                {"a": 1, "s": "one", "f": 1.5, "b": false, "o": {"k": [1]}, "_event_time": "2026-11-25T10:00:00Z"},
                {"a": 2, "s": "two", "f": 2.5, "b": true, "o": {"k": [1, 2]}, "_event_time": "2026-11-25T10:01:30Z"},
                {"a": 3, "s": "three", "f": 3.5, "b": true, "o": {"k": []}, "_event_time": "2026-11-25T10:02:00Z"}]}),
        ),
    ] {
        let r = agent
            .post(s.url(path))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let port = pg_port(&s);
    let conninfo = format!("host=127.0.0.1 port={port} user=tarn dbname=tarn password={key}");
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-At", "-c", "SELECT count(*), max(a) FROM events"])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3|3");
    // psql's \dt reads pg_catalog: collections are tables of their workspace's schema.
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-At", "-c", "\\dt"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql \\dt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "commons|events|table|tarn\ncommons|twitter-kinesis-demo|table|tarn"
    );
    // psql's \d TABLE: the collection's top-level fields with the types the endpoint sends
    // (a field holding an int and a string is jsonb); every document has _id and _event_time.
    let events = [
        "_id|text||not null|",
        "_event_time|timestamp with time zone||not null|",
        "_meta|jsonb|||",
        "a|bigint|||",
        "s|text|||",
        "f|double precision|||",
        "b|boolean|||",
        "o|jsonb|||",
    ];
    let tweets = [
        "_id|text||not null|",
        "_event_time|timestamp with time zone||not null|",
        "_meta|jsonb|||",
        "id|jsonb|||",
        "text|text|||",
        "user|jsonb|||",
        "retweeted|boolean|||",
        "created_at|text|||",
    ];
    for (table, expected) in [
        ("events", &events[..]),
        ("commons.events", &events[..]),
        ("\"twitter-kinesis-demo\"", &tweets[..]),
        ("commons.\"twitter-kinesis-demo\"", &tweets[..]),
    ] {
        let out = Command::new("psql")
            .arg(&conninfo)
            .args([
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("\\d {table}"),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "psql \\d {table}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "\\d {table}");
    }
    // \d+ adds storage and the access method.
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-c", "\\d+ events"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Access method: heap"),
        "psql \\d+: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("double precision"),
        "psql \\d+ lists the columns: {stdout}"
    );
    // Without a certificate an SSLRequest is answered N.
    let out = Command::new("psql")
        .arg(format!("{conninfo} sslmode=require"))
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not support SSL"),
        "sslmode=require without a certificate: {stderr}"
    );
    let bad = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=tarn dbname=tarn password=wrong"
        ))
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a wrong key is refused");

    let py = repo_root().join(".venv-test/bin/python");
    assert!(py.exists(), "run scripts/test-deps");
    let out = Command::new(py)
        .arg(repo_root().join("crates/tarn/tests/e2e/py/pg_clients.py"))
        .args(["127.0.0.1", &port, &key, &s.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_clients.py:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(v["checks"].as_i64().unwrap() >= 43, "{v}");
}

/// A self-signed ECDSA certificate for 127.0.0.1 and its key, made by the openssl command.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command runs (scripts/test-deps installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Runs psql with `conninfo` and `args`: (success, stdout, stderr).
fn psql(conninfo: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The process id of the `tarn serve` whose data dir is `dir`.
fn server_pid(dir: &Path) -> u32 {
    let dir = dir.to_str().expect("a UTF-8 path");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| a == dir) {
            return pid;
        }
    }
    panic!("no tarn serve process for {dir}");
}

/// CPU seconds (user and system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: state is the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn tls_scram_and_cancel_requests_on_the_postgres_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key_file) = self_signed(certs.path(), "server");
    let grafana = create_key(dir.path(), "grafana");
    let ci = create_key(dir.path(), "ci");
    let s = TestServer::start(
        dir.path(),
        &[
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let port = pg_port(&s);
    let base = format!("host=127.0.0.1 port={port} dbname=tarn");
    // TLS, and SCRAM-SHA-256-PLUS: with channel_binding=require libpq accepts nothing else.
    let tls_scram =
        format!("{base} user=grafana password={grafana} sslmode=require channel_binding=require");
    let (ok, out, err) = psql(&tls_scram, &["-c", "\\conninfo", "-c", "SHOW ssl"]);
    assert!(ok, "psql over TLS with SCRAM: {err}");
    assert!(out.contains("SSL connection (protocol: TLSv1."), "{out}");
    assert!(out.ends_with("\non"), "SHOW ssl: {out}");
    let (ok, out, err) = psql(&tls_scram, &["-c", "SELECT 40 + 2"]);
    assert!(ok && out == "42", "query over TLS: {out}{err}");
    // SCRAM without TLS.
    let plain = format!("{base} user=grafana password={grafana} sslmode=disable");
    let (ok, out, err) = psql(&plain, &["-c", "SELECT 1"]);
    assert!(ok && out == "1", "SCRAM without TLS: {out}{err}");
    // A user name that names a key takes that key only; a wrong key is refused.
    for (user, password, sslmode) in [
        ("grafana", ci.as_str(), "require"),
        ("grafana", "tarn_wrong", "disable"),
        ("tarn", "tarn_wrong", "require"),
    ] {
        let (ok, _, err) = psql(
            &format!("{base} user={user} password={password} sslmode={sslmode}"),
            &["-c", "SELECT 1"],
        );
        assert!(
            !ok && err.contains("password authentication failed"),
            "user {user} with a wrong key: {err}"
        );
    }
    // Other user names get a cleartext password request, for any key.
    let (ok, out, err) = psql(
        &format!("{base} user=tarn password={ci} sslmode=require"),
        &["-c", "SELECT 1"],
    );
    assert!(ok && out == "1", "cleartext password over TLS: {out}{err}");

    // psycopg: TLS, SCRAM (require_auth), and cancel requests on both protocols.
    let py = repo_root().join(".venv-test/bin/python");
    assert!(py.exists(), "run scripts/test-deps");
    let out = Command::new(py)
        .arg(repo_root().join("crates/tarn/tests/e2e/py/pg_clients.py"))
        .args(["--secure", "127.0.0.1", &port, "grafana", &grafana])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_clients.py --secure:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(v["checks"].as_i64().unwrap() >= 20, "{v}");
    // The cancelled queries stopped: the server is idle, not still joining.
    let pid = server_pid(dir.path());
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 1.0,
        "the server used {used:.2} CPU s in 3 s after the cancels"
    );
}

/// Runs `tarn serve` expecting it to stop at once with an error; returns its stderr.
fn serve_fails(dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tarn binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tarn serve {extra:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "tarn serve {extra:?} exited 0");
    stderr
}

#[test]
fn a_bad_tls_certificate_or_key_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "a");
    let (_, other_key) = self_signed(certs.path(), "b");
    let junk = certs.path().join("junk.pem");
    std::fs::write(&junk, "not PEM").unwrap();
    let missing = certs.path().join("missing.pem");
    let [cert, key, other_key, junk, missing] =
        [&cert, &key, &other_key, &junk, &missing].map(|p| p.to_str().unwrap().to_owned());
    for (c, k, expected) in [
        (
            &missing,
            &key,
            format!("cannot read the Postgres TLS certificate {missing}"),
        ),
        (
            &junk,
            &key,
            format!("certificate {junk} holds no PEM certificate"),
        ),
        (
            &cert,
            &missing,
            format!("cannot read the Postgres TLS key {missing}"),
        ),
        (&cert, &junk, format!("key {junk} holds no PEM private key")),
        (
            &cert,
            &other_key,
            format!("key {other_key} does not fit the certificate {cert}"),
        ),
    ] {
        let stderr = serve_fails(dir.path(), &["--pg-tls-cert", c, "--pg-tls-key", k]);
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in {stderr}"
        );
    }
    let stderr = serve_fails(dir.path(), &["--pg-tls-cert", &cert]);
    assert!(stderr.contains("--pg-tls-key"), "{stderr}");
}
