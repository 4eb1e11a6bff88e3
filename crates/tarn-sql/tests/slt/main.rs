//! Runs the `.slt` files beside this file against tarn's storage and query engine.
//!
//! Besides SQL, two statements load data:
//! - `CREATE COLLECTION name [event_time_field]`
//! - `INSERT INTO name DOCUMENTS` followed by one JSON document per line.
//! - `SEAL name`: seals the mutable segment and waits until its files are durable, after
//!   which the sealed segments are read from those files.
//!
//! Values print as: strings as they are, NULL for null, anything else as compact JSON.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tarn_sql::{QueryEngine, QueryRequest};
use tarn_storage::document::{IngestContext, prepare};
use tarn_storage::{CollectionOptions, EventTimeInfo, SealPolicy, Storage};

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SltError {}

struct TarnDb {
    storage: Arc<Storage>,
    engine: QueryEngine,
    _dir: tempfile::TempDir,
}

/// Event times in .slt files are fixed: 2020-12-03T12:53:20Z plus one second per document.
const BASE_MICROS: i64 = 1_607_000_000_000_000;

impl TarnDb {
    fn new() -> TarnDb {
        let dir = tempfile::tempdir().unwrap();
        let policy = SealPolicy {
            max_rows: 4,
            ..Default::default()
        };
        let storage = Storage::open(dir.path(), policy).unwrap();
        let engine = QueryEngine::new(storage.clone());
        TarnDb {
            storage,
            engine,
            _dir: dir,
        }
    }

    async fn insert(&self, name: &str, lines: &str) -> Result<u64, SltError> {
        let (info, c) = self
            .storage
            .get_collection("commons", name)
            .map_err(|e| SltError(e.to_string()))?;
        let meta = json!({"source": "slt"});
        let mut docs = Vec::new();
        for (i, line) in lines.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| SltError(format!("bad JSON {line}: {e}")))?;
            let now = BASE_MICROS + (c.stats().doc_count as i64 + i as i64) * 1_000_000;
            let ctx = IngestContext {
                event_time_info: info.options.event_time_info.as_ref(),
                now_micros: now,
                meta: &meta,
            };
            docs.push((
                prepare(v, &ctx).map_err(SltError)?,
                line.as_bytes().to_vec(),
            ));
        }
        let n = docs.len() as u64;
        c.insert(docs, Vec::new())
            .await
            .map_err(|e| SltError(e.to_string()))?;
        Ok(n)
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for TarnDb {
    type Error = SltError;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<Self::ColumnType>, SltError> {
        let trimmed = sql.trim();
        if let Some(rest) = trimmed.strip_prefix("CREATE COLLECTION ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let options = CollectionOptions {
                event_time_info: parts.next().map(|f| EventTimeInfo {
                    field: f.to_owned(),
                    format: Some("milliseconds_since_epoch".into()),
                    time_zone: None,
                }),
                retention_secs: None,
            };
            self.storage
                .create_collection("commons", name, "", options, Default::default())
                .map_err(|e| SltError(e.to_string()))?;
            return Ok(sqllogictest::DBOutput::StatementComplete(0));
        }
        if let Some(name) = trimmed.strip_prefix("SEAL ") {
            let (_, c) = self
                .storage
                .get_collection("commons", name.trim())
                .map_err(|e| SltError(e.to_string()))?;
            c.seal().await.map_err(|e| SltError(e.to_string()))?;
            return Ok(sqllogictest::DBOutput::StatementComplete(0));
        }
        if let Some(rest) = trimmed.strip_prefix("INSERT INTO ") {
            let (head, body) = rest.split_once('\n').unwrap_or((rest, ""));
            let name = head
                .trim()
                .strip_suffix("DOCUMENTS")
                .map(str::trim)
                .ok_or_else(|| SltError("INSERT INTO name DOCUMENTS".into()))?;
            let n = self.insert(name, body).await?;
            return Ok(sqllogictest::DBOutput::StatementComplete(n));
        }
        let out = self
            .engine
            .query(&QueryRequest {
                sql: sql.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let names: Vec<&str> = out.column_fields.iter().map(|c| c.name.as_str()).collect();
        let rows = out
            .results
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|n| render(r.get(*n).unwrap_or(&Value::Null)))
                    .collect()
            })
            .collect();
        Ok(sqllogictest::DBOutput::Rows {
            types: vec![sqllogictest::DefaultColumnType::Any; names.len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {
        self.storage.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for f in files {
        let mut runner = sqllogictest::Runner::new(|| async { Ok::<_, SltError>(TarnDb::new()) });
        runner
            .run_file_async(&f)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}
