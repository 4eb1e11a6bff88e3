//! Random documents in, `SELECT *` out, equal: from memory, after replay and from sealed segments.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::support::{TestServer, strip_generated};

const KEYS: &[&str] = &["a", "b", "user", "x.y", "é", "😀", "", "n", "list", "deep"];

fn random_scalar(rng: &mut StdRng) -> Value {
    match rng.random_range(0..9) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random_range(-1000i64..1000)),
        4 => json!(rng.random::<f64>() * 1e6 - 5e5),
        5 => json!(rng.random_range(-3.0f64..3.0)),
        6 => json!(
            [
                "plain",
                "ünïcödé",
                "😀 emoji",
                "quote\"back\\slash",
                "line\nbreak",
                ""
            ][rng.random_range(0..6)]
        ),
        7 => json!(9_007_199_254_740_993i64 + rng.random_range(0..1000)),
        _ => json!(u64::MAX - rng.random_range(0..10)),
    }
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    if depth >= 4 {
        return random_scalar(rng);
    }
    match rng.random_range(0..10) {
        0..=5 => random_scalar(rng),
        6 | 7 => Value::Object(random_object(rng, depth + 1)),
        _ => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
    }
}

fn random_object(rng: &mut StdRng, depth: u32) -> Map<String, Value> {
    let mut m = Map::new();
    for _ in 0..rng.random_range(0..5) {
        m.insert(
            KEYS[rng.random_range(0..KEYS.len())].to_owned(),
            random_value(rng, depth),
        );
    }
    m
}

fn check(s: &TestServer, written: &HashMap<String, Value>) {
    let rows = s.query("SELECT * FROM rt");
    assert_eq!(rows.len(), written.len());
    for row in rows {
        let id = row["_id"].as_str().unwrap().to_owned();
        let got = strip_generated(row);
        assert_eq!(&got, &written[&id], "document {id} did not round-trip");
    }
}

#[test]
fn random_documents_round_trip_through_select_star() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &["--seal-rows", "150"]);
    s.create_collection("commons", json!({"name": "rt"}));
    let mut rng = StdRng::seed_from_u64(0x7a27);
    let mut written = HashMap::new();
    for batch in 0..12 {
        let docs: Vec<Value> = (0..40)
            .map(|i| {
                let mut m = random_object(&mut rng, 0);
                // Some ids repeat so that replacement is exercised too.
                m.insert("_id".into(), json!(format!("d{}", (batch * 40 + i) % 400)));
                Value::Object(m)
            })
            .collect();
        for st in s.add_docs("commons", "rt", &docs) {
            assert!(
                st["status"] == "ADDED" || st["status"] == "REPLACED",
                "{st}"
            );
        }
        for d in docs {
            written.insert(d["_id"].as_str().unwrap().to_owned(), d);
        }
    }
    check(&s, &written);
    drop(s);
    let s = TestServer::start(dir.path(), &["--seal-rows", "150"]);
    check(&s, &written);
}
