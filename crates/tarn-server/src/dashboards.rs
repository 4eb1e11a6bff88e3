//! Dashboards as data: documents of panels (title, SQL with `:parameters`, visualisation,
//! refresh interval), written in JSON or YAML, stored in `dashboards.json`, with the
//! tutorial's two views built in, and the live feeds that run each panel's query once per
//! interval for all its viewers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tarn_common::{TarnError, TarnResult};
use tarn_sql::{QueryEngine, QueryParameter, QueryRequest};
use tarn_storage::Storage;
use tokio::sync::watch;

/// The dashboards that ship with tarn: the tutorial's Tweets and Hashtag views.
pub const BUILT_IN: [&str; 2] = [
    include_str!("../dashboards/tweets.json"),
    include_str!("../dashboards/hashtag.json"),
];

const VIZ: [&str; 5] = ["table", "bar", "line", "timeseries", "number"];

/// A view parameter, bound into panel SQL as `:name` (a string).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    #[serde(default)]
    pub default: String,
}

/// Clicking a value of `column` opens `dashboard` with `param` set to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Link {
    pub column: String,
    pub dashboard: String,
    pub param: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panel {
    pub id: String,
    pub title: String,
    pub sql: String,
    /// `table`, `bar`, `line`, `timeseries` or `number`.
    pub viz: String,
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// Column for the x axis or bar labels (charts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Column for the y axis or bar values (charts, number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
}

fn default_refresh_ms() -> u64 {
    2_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dashboard {
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params: Vec<Param>,
    pub panels: Vec<Panel>,
}

/// How a dashboard document is written: JSON or YAML (the same fields either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// The media types that mean YAML.
const YAML_TYPES: [&str; 4] = [
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// A media type without its parameters, lower-cased.
fn media_type(s: &str) -> String {
    s.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

impl Format {
    /// The media type of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
        }
    }

    /// The format of a request body from its `Content-Type`: YAML for `application/yaml`,
    /// `application/x-yaml`, `text/yaml` and `text/x-yaml`; JSON otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type {
            Some(ct) if YAML_TYPES.contains(&media_type(ct).as_str()) => Format::Yaml,
            _ => Format::Json,
        }
    }

    /// The format a client asks for with `Accept`: YAML when it names a YAML type that it
    /// prefers to JSON (by `q`; a tie with an explicit `application/json` goes to JSON, a tie
    /// with a wildcard to YAML); JSON otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let (mut yaml, mut json, mut wildcard) = (0.0f32, 0.0f32, 0.0f32);
        for range in accept.unwrap_or_default().split(',') {
            let mt = media_type(range);
            let q = range
                .split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .filter(|q| q.is_finite())
                .unwrap_or(1.0);
            if YAML_TYPES.contains(&mt.as_str()) {
                yaml = yaml.max(q);
            } else if mt == "application/json" {
                json = json.max(q);
            } else if mt == "*/*" || mt == "application/*" || mt == "text/*" {
                wildcard = wildcard.max(q);
            }
        }
        if yaml > 0.0 && yaml > json && yaml >= wildcard {
            Format::Yaml
        } else {
            Format::Json
        }
    }

    /// The format of a file from its extension: YAML for `.yaml` and `.yml`, JSON otherwise.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Json,
        }
    }
}

impl Dashboard {
    /// Parses and checks a JSON dashboard document; errors say which part is wrong.
    pub fn parse(text: &[u8]) -> TarnResult<Dashboard> {
        Self::parse_as(text, Format::Json)
    }

    /// Parses and checks a YAML dashboard document; errors say which part is wrong and,
    /// when the YAML itself is wrong, at which line and column.
    pub fn parse_yaml(text: &[u8]) -> TarnResult<Dashboard> {
        Self::parse_as(text, Format::Yaml)
    }

    /// Parses and checks a dashboard document written in `format`.
    pub fn parse_as(text: &[u8], format: Format) -> TarnResult<Dashboard> {
        let d: Dashboard = match format {
            Format::Json => serde_json::from_slice(text).map_err(|e| {
                TarnError::invalid(format!("the dashboard is not valid: {e}"))
                    .at(e.line() as u64, e.column() as u64)
            })?,
            Format::Yaml => serde_yaml_ng::from_slice(text).map_err(|e| {
                let err = TarnError::invalid(format!("the dashboard is not valid YAML: {e}"));
                match e.location() {
                    Some(l) => err.at(l.line() as u64, l.column() as u64),
                    None => err,
                }
            })?,
        };
        d.validate()?;
        Ok(d)
    }

    /// The dashboard as a YAML document (what [`Dashboard::parse_yaml`] reads back).
    pub fn to_yaml(&self) -> TarnResult<String> {
        serde_yaml_ng::to_string(self)
            .map_err(|e| TarnError::internal(format!("cannot write the dashboard as YAML: {e}")))
    }

    pub fn validate(&self) -> TarnResult<()> {
        tarn_common::names::validate_name("dashboard", &self.name)?;
        if self.panels.is_empty() {
            return Err(TarnError::invalid(format!(
                "dashboard '{}' has no panels",
                self.name
            )));
        }
        let mut ids = Vec::new();
        for p in &self.panels {
            if p.id.is_empty() || ids.contains(&&p.id) {
                return Err(TarnError::invalid(format!(
                    "dashboard '{}': panel ids must be unique and non-empty ('{}')",
                    self.name, p.id
                )));
            }
            ids.push(&p.id);
            if !VIZ.contains(&p.viz.as_str()) {
                return Err(TarnError::invalid(format!(
                    "panel '{}': viz '{}' is not one of {}",
                    p.id,
                    p.viz,
                    VIZ.join(", ")
                )));
            }
            if p.refresh_ms < 200 {
                return Err(TarnError::invalid(format!(
                    "panel '{}': refresh_ms must be at least 200",
                    p.id
                )));
            }
            if p.sql.trim().is_empty() {
                return Err(TarnError::invalid(format!("panel '{}' has no sql", p.id)));
            }
            for name in sql_params(&p.sql) {
                if !self.params.iter().any(|q| q.name == name) {
                    return Err(TarnError::invalid(format!(
                        "panel '{}' uses :{name}, which is not among the dashboard's params",
                        p.id
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn panel(&self, id: &str) -> TarnResult<&Panel> {
        self.panels.iter().find(|p| p.id == id).ok_or_else(|| {
            TarnError::not_found(format!("dashboard '{}' has no panel '{id}'", self.name))
        })
    }
}

/// The `:name` parameters a SQL text uses (outside string literals).
fn sql_params(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_str = false;
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_str = !in_str;
        } else if !in_str && c == ':' && i + 1 < chars.len() && chars[i + 1] != ':' {
            let prev_colon = i > 0 && chars[i - 1] == ':';
            let name: String = chars[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            if !prev_colon && !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
                if !out.contains(&name) {
                    out.push(name.clone());
                }
                i += name.len();
            }
        }
        i += 1;
    }
    out
}

/// Dashboards of a data dir, in `dashboards.json`.
pub struct DashboardStore {
    path: PathBuf,
    items: Mutex<BTreeMap<String, Dashboard>>,
}

impl DashboardStore {
    /// Opens the store; the built-in dashboards are added when absent.
    pub fn open(data_dir: &Path) -> TarnResult<DashboardStore> {
        let path = data_dir.join("dashboards.json");
        let mut items: BTreeMap<String, Dashboard> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| TarnError::internal(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        for text in BUILT_IN {
            let d = Dashboard::parse(text.as_bytes()).expect("built-in dashboards are valid");
            items.entry(d.name.clone()).or_insert(d);
        }
        Ok(DashboardStore {
            path,
            items: Mutex::new(items),
        })
    }

    pub fn list(&self) -> Vec<Dashboard> {
        self.items.lock().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> TarnResult<Dashboard> {
        self.items
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| TarnError::not_found(format!("dashboard '{name}' does not exist")))
    }

    /// Creates (`replace` false: 409 if it exists) or replaces a dashboard.
    pub fn put(&self, d: Dashboard, replace: bool) -> TarnResult<Dashboard> {
        d.validate()?;
        let mut items = self.items.lock();
        if !replace && items.contains_key(&d.name) {
            return Err(TarnError::already_exists(format!(
                "dashboard '{}' already exists",
                d.name
            )));
        }
        let old = items.insert(d.name.clone(), d.clone());
        if let Err(e) = self.save(&items) {
            match old {
                Some(o) => items.insert(d.name.clone(), o),
                None => items.remove(&d.name),
            };
            return Err(e);
        }
        Ok(d)
    }

    pub fn delete(&self, name: &str) -> TarnResult<Dashboard> {
        let mut items = self.items.lock();
        let removed = items
            .remove(name)
            .ok_or_else(|| TarnError::not_found(format!("dashboard '{name}' does not exist")))?;
        if let Err(e) = self.save(&items) {
            items.insert(name.to_owned(), removed);
            return Err(e);
        }
        Ok(removed)
    }

    fn save(&self, items: &BTreeMap<String, Dashboard>) -> TarnResult<()> {
        let bytes = serde_json::to_vec_pretty(items)
            .map_err(|e| TarnError::internal(format!("cannot encode dashboards: {e}")))?;
        tarn_storage::collection::write_atomic(&self.path, &bytes)
    }
}

/// Identifies a live feed: one per panel and parameter values, shared by all viewers.
type FeedKey = (String, String, Vec<(String, String)>);

struct Feed {
    tx: Arc<watch::Sender<Option<Arc<String>>>>,
    runs: Arc<AtomicU64>,
}

/// Runs panel queries for viewers: one task per panel and parameter values, whatever the
/// number of viewers; it runs the query every `refresh_ms` only when a collection the query
/// reads changed since the last run, and stops when the last viewer leaves.
pub struct LiveHub {
    engine: Arc<QueryEngine>,
    storage: Arc<Storage>,
    feeds: Mutex<HashMap<FeedKey, Feed>>,
}

impl LiveHub {
    pub fn new(engine: Arc<QueryEngine>, storage: Arc<Storage>) -> Arc<LiveHub> {
        Arc::new(LiveHub {
            engine,
            storage,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    /// A receiver of the panel's latest result (as an SSE `data` JSON text).
    pub fn subscribe(
        self: &Arc<Self>,
        dashboard: &Dashboard,
        panel: &Panel,
        params: Vec<(String, String)>,
    ) -> watch::Receiver<Option<Arc<String>>> {
        let key: FeedKey = (dashboard.name.clone(), panel.id.clone(), params.clone());
        let mut feeds = self.feeds.lock();
        if let Some(f) = feeds.get(&key) {
            return f.tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let runs = Arc::new(AtomicU64::new(0));
        feeds.insert(
            key.clone(),
            Feed {
                tx: tx.clone(),
                runs: runs.clone(),
            },
        );
        let hub = self.clone();
        let panel = panel.clone();
        tokio::spawn(async move {
            hub.run_feed(key, panel, params, tx, runs).await;
        });
        rx
    }

    /// Newest `last_updated_ms` of the collections a panel read last time.
    fn version(&self, collections: &[String]) -> i64 {
        collections
            .iter()
            .filter_map(|c| {
                let (ws, name) = c.split_once('.')?;
                self.storage.get_collection(ws, name).ok()
            })
            .map(|(_, c)| c.stats().last_updated_ms)
            .max()
            .unwrap_or(0)
    }

    async fn run_feed(
        self: Arc<Self>,
        key: FeedKey,
        panel: Panel,
        params: Vec<(String, String)>,
        tx: Arc<watch::Sender<Option<Arc<String>>>>,
        runs: Arc<AtomicU64>,
    ) {
        let interval = Duration::from_millis(panel.refresh_ms);
        let request = QueryRequest {
            sql: panel.sql.clone(),
            parameters: params
                .iter()
                .map(|(n, v)| QueryParameter {
                    name: n.clone(),
                    type_: Some("string".into()),
                    value: Value::String(v.clone()),
                })
                .collect(),
            default_row_limit: None,
        };
        let mut collections: Vec<String> = Vec::new();
        let mut last_version: Option<i64> = None;
        loop {
            // The last viewer left: stop (a new viewer starts a new feed).
            {
                let mut feeds = self.feeds.lock();
                if tx.receiver_count() == 0 {
                    feeds.remove(&key);
                    return;
                }
            }
            let version = self.version(&collections);
            if last_version != Some(version) || collections.is_empty() {
                runs.fetch_add(1, Ordering::Relaxed);
                let started = std::time::Instant::now();
                let payload = match self.engine.query(&request).await {
                    Ok(out) => {
                        collections = out.collections.clone();
                        json!({
                            "panel": key.1,
                            "results": out.results,
                            "column_fields": out.column_fields,
                            "warnings": out.warnings,
                            "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
                            "newest_ms": self.version(&out.collections),
                            "ran_at_ms": chrono::Utc::now().timestamp_millis(),
                        })
                    }
                    Err(e) => {
                        json!({"panel": key.1,
                               "error": {"message": e.message, "line": e.line, "column": e.column},
                                     "ran_at_ms": chrono::Utc::now().timestamp_millis()})
                    }
                };
                tracing::debug!(dashboard = %key.0, panel = %key.1,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "panel query ran");
                last_version = Some(self.version(&collections));
                let _ = tx.send(Some(Arc::new(payload.to_string())));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Feeds and how often each ran its query: to check that viewers share queries.
    pub fn stats(&self) -> Value {
        let feeds = self.feeds.lock();
        let list: Vec<Value> = feeds
            .iter()
            .map(|((d, p, params), f)| {
                json!({"dashboard": d, "panel": p,
                       "params": params.iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(),
                       "viewers": f.tx.receiver_count(),
                       "runs": f.runs.load(Ordering::Relaxed)})
            })
            .collect();
        json!({"feeds": list})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_dashboards_are_valid() {
        for text in BUILT_IN {
            Dashboard::parse(text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn params_are_found_outside_strings() {
        assert_eq!(
            sql_params("SELECT ':no' FROM t WHERE :tag IN x AND a::int > :n2"),
            vec!["tag".to_string(), "n2".to_string()]
        );
    }

    #[test]
    fn invalid_dashboards_say_why() {
        let e = Dashboard::parse(br#"{"name": "d", "panels": [{"id": "a", "title": "A", "sql": "SELECT :x", "viz": "table"}]}"#).unwrap_err();
        assert!(e.message.contains(":x"), "{}", e.message);
        let e = Dashboard::parse(br#"{"name": "d", "panels": [{"id": "a", "title": "A", "sql": "SELECT 1", "viz": "pie"}]}"#).unwrap_err();
        assert!(e.message.contains("pie"), "{}", e.message);
        let e = Dashboard::parse(br#"{"name": "d", "panels": []"#).unwrap_err();
        assert!(e.line.is_some());
    }

    const YAML: &str = "\
name: mine
title: Mine
params:
  - name: tag
    default: music
panels:
  - id: top
    title: Top
    viz: bar
    refresh_ms: 1000
    x: tag
    y: n
    sql: |
      SELECT tag, count(*) AS n
      FROM t
      WHERE tag = :tag
      GROUP BY tag
";

    #[test]
    fn yaml_dashboards_read_like_json_and_round_trip() {
        let d = Dashboard::parse_yaml(YAML.as_bytes()).unwrap();
        assert_eq!(d.name, "mine");
        assert_eq!(d.params[0].default, "music");
        let p = &d.panels[0];
        assert_eq!((p.viz.as_str(), p.refresh_ms), ("bar", 1000));
        assert!(p.sql.contains("WHERE tag = :tag\n"), "{:?}", p.sql);
        // The same document in JSON is the same dashboard.
        let json = serde_json::to_vec(&d).unwrap();
        let again = Dashboard::parse(&json).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&d).unwrap()
        );
        // And its YAML reads back unchanged.
        let yaml = d.to_yaml().unwrap();
        let back = Dashboard::parse_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&d).unwrap()
        );
        // Every built-in dashboard survives the trip through YAML.
        for text in BUILT_IN {
            let d = Dashboard::parse(text.as_bytes()).unwrap();
            let back = Dashboard::parse_yaml(d.to_yaml().unwrap().as_bytes()).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&d).unwrap()
            );
        }
    }

    #[test]
    fn yaml_errors_name_the_line_and_column() {
        // A tab where YAML wants spaces, on line 3.
        let e = Dashboard::parse_yaml(b"name: d\npanels:\n\t- id: a\n").unwrap_err();
        assert_eq!(e.kind, tarn_common::ErrorKind::InvalidInput);
        assert_eq!(e.line, Some(3), "{}", e.message);
        assert!(e.column.is_some(), "{}", e.message);
        assert!(e.message.contains("line 3"), "{}", e.message);
        // An unclosed flow sequence.
        let e = Dashboard::parse_yaml(b"name: d\npanels: [\n  {id: a\n").unwrap_err();
        assert!(e.line.is_some() && e.column.is_some(), "{}", e.message);
        // A wrong type is located too.
        let e = Dashboard::parse_yaml(b"name: d\npanels:\n  - id: a\n    title: A\n    sql: SELECT 1\n    viz: table\n    refresh_ms: soon\n").unwrap_err();
        assert_eq!(e.line, Some(7), "{}", e.message);
        assert!(e.message.contains("refresh_ms"), "{}", e.message);
        // Valid YAML that is not a valid dashboard says why, like JSON.
        let e = Dashboard::parse_yaml(
            b"name: d\npanels:\n  - {id: a, title: A, sql: SELECT 1, viz: pie}\n",
        )
        .unwrap_err();
        assert!(e.message.contains("pie"), "{}", e.message);
        for bad in [
            &b""[..],
            b"- 1\n- 2\n",
            b"a: &x [*x]\n",
            b"\xff\xfe",
            b"name: d\n---\nname: e\n",
        ] {
            assert!(Dashboard::parse_yaml(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_come_from_headers_and_file_names() {
        use Format::{Json, Yaml};
        for (ct, f) in [
            (Some("application/yaml"), Yaml),
            (Some("application/x-yaml; charset=utf-8"), Yaml),
            (Some("Text/YAML"), Yaml),
            (Some("application/json"), Json),
            (Some("text/plain"), Json),
            (None, Json),
        ] {
            assert_eq!(Format::from_content_type(ct), f, "{ct:?}");
        }
        for (accept, f) in [
            (Some("application/yaml"), Yaml),
            (Some("text/yaml, */*;q=0.1"), Yaml),
            (Some("*/*, application/yaml"), Yaml),
            (Some("application/json, application/yaml"), Json),
            (Some("application/json;q=0.5, application/x-yaml"), Yaml),
            (Some("application/yaml;q=0.2, application/json"), Json),
            (Some("application/yaml;q=0"), Json),
            (Some("*/*"), Json),
            (Some(""), Json),
            (None, Json),
        ] {
            assert_eq!(Format::from_accept(accept), f, "{accept:?}");
        }
        assert_eq!(Format::from_path(Path::new("d/x.yaml")), Yaml);
        assert_eq!(Format::from_path(Path::new("x.YML")), Yaml);
        assert_eq!(Format::from_path(Path::new("x.json")), Json);
        assert_eq!(Format::from_path(Path::new("yaml")), Json);
    }

    #[test]
    fn store_keeps_dashboards_and_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        let s = DashboardStore::open(dir.path()).unwrap();
        assert!(s.get("tweets").is_ok() && s.get("hashtag").is_ok());
        let d = Dashboard::parse(br#"{"name": "mine", "panels": [{"id": "a", "title": "A", "sql": "SELECT 1", "viz": "number"}]}"#).unwrap();
        s.put(d.clone(), false).unwrap();
        assert_eq!(
            s.put(d, false).unwrap_err().kind,
            tarn_common::ErrorKind::AlreadyExists
        );
        let s = DashboardStore::open(dir.path()).unwrap();
        assert_eq!(s.get("mine").unwrap().panels[0].viz, "number");
        s.delete("mine").unwrap();
        assert!(s.get("mine").is_err());
    }
}
