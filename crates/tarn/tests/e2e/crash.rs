//! `kill -9` while documents are being written: every acknowledged document is there once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::support::{TestServer, agent};

#[test]
fn acknowledged_documents_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_id = 0u64;
    {
        let s = TestServer::start(dir.path(), &["--seal-rows", "300"]);
        s.create_collection("commons", json!({"name": "crash"}));
    }
    for round in 0..5 {
        let mut s = TestServer::start(dir.path(), &["--seal-rows", "300"]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3 {
            let url = s.url("/v1/orgs/self/ws/commons/collections/crash/docs");
            let acked = acked.clone();
            let stop = stop.clone();
            let start = next_id + w * 1_000_000;
            writers.push(std::thread::spawn(move || {
                let agent = agent();
                let mut id = start;
                while !stop.load(Ordering::Relaxed) {
                    let docs: Vec<Value> = (0..20).map(|k| json!({"_id": format!("r{round}-{}", id + k), "pad": "x".repeat(500), "k": k})).collect();
                    id += 20;
                    let body = json!({"data": docs}).to_string();
                    let Ok(mut resp) = agent.post(&url).header("Content-Type", "application/json").send(body) else { break };
                    if resp.status() != 200 {
                        break;
                    }
                    let Ok(v) = resp.body_mut().read_json::<Value>() else { break };
                    let mut a = acked.lock().unwrap();
                    for d in v["data"].as_array().unwrap() {
                        assert_eq!(d["status"], "ADDED");
                        a.insert(d["_id"].as_str().unwrap().to_owned());
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        next_id += 10_000_000;
        let s = TestServer::start(dir.path(), &["--seal-rows", "300"]);
        let rows = s.query("SELECT _id FROM crash");
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r["_id"].as_str().unwrap().to_owned())
            .collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "round {round}: a document is present twice"
        );
        let a = acked.lock().unwrap();
        let missing: Vec<&String> = a.iter().filter(|id| !unique.contains(id)).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged documents lost: {missing:?} (of {})",
            a.len()
        );
        assert!(
            a.len() > round * 20,
            "round {round}: writes were acknowledged"
        );
    }
}
