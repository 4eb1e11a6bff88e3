//! Starts, watches and stops the sources of every collection.
//!
//! A collection's sources are part of its create request (`sources[]`, kept in the
//! catalog), so they restart with the server and resume from the positions stored in the
//! collection. The manager owns one task per source and the collection's ingest-error log.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tarn_common::{TarnError, TarnResult};
use tarn_storage::{Collection, CollectionInfo, Storage};
use tokio::task::JoinHandle;

use crate::integrations::IntegrationStore;
use crate::kafka::{self, KafkaSpec};
use crate::kinesis::{self, KinesisSpec, StartPosition};
use crate::pipeline::{
    IngestErrorLog, IngestTransform, SourceSink, SourceStatus, TransformFactory,
};

/// One parsed entry of a collection's `sources[]`.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    Kinesis {
        integration: String,
        spec: KinesisSpec,
    },
    Kafka {
        integration: String,
        spec: KafkaSpec,
    },
}

struct Running {
    statuses: Vec<Arc<SourceStatus>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The sources of all collections.
pub struct SourceManager {
    storage: Arc<Storage>,
    integrations: Arc<IntegrationStore>,
    transforms: Option<TransformFactory>,
    running: Mutex<HashMap<String, Running>>,
    /// Per collection uuid; kept after the sources stop so the errors stay visible.
    error_logs: Mutex<HashMap<String, Arc<IngestErrorLog>>>,
}

fn start_position(v: &Value) -> TarnResult<StartPosition> {
    match v.get("offset_reset_policy").and_then(Value::as_str) {
        None => Ok(StartPosition::Earliest),
        Some(p) if p.eq_ignore_ascii_case("EARLIEST") || p.eq_ignore_ascii_case("TRIM_HORIZON") => {
            Ok(StartPosition::Earliest)
        }
        Some(p) if p.eq_ignore_ascii_case("LATEST") => Ok(StartPosition::Latest),
        Some(p) => Err(TarnError::invalid(format!(
            "offset_reset_policy '{p}' is not known: use EARLIEST or LATEST"
        ))),
    }
}

impl SourceManager {
    pub fn new(
        storage: Arc<Storage>,
        integrations: Arc<IntegrationStore>,
        transforms: Option<TransformFactory>,
    ) -> Arc<SourceManager> {
        Arc::new(SourceManager {
            storage,
            integrations,
            transforms,
            running: Mutex::new(HashMap::new()),
            error_logs: Mutex::new(HashMap::new()),
        })
    }

    pub fn integrations(&self) -> &Arc<IntegrationStore> {
        &self.integrations
    }

    /// Parses and checks a create request's `sources` (each names an existing integration
    /// of its kind) and its `field_mapping_query`, before the collection is created.
    pub fn validate(&self, request: &Map<String, Value>) -> TarnResult<Vec<SourceSpec>> {
        if let Some(sql) = field_mapping_sql(request)? {
            self.transform_for_sql(&sql, None)?;
        }
        let sources = match request.get("sources") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(TarnError::invalid("sources must be an array")),
        };
        let mut specs = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            let integration = s
                .get("integration_name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TarnError::invalid(format!("sources[{i}] needs an integration_name"))
                })?
                .to_owned();
            let found = self.integrations.get(&integration).map_err(|_| {
                TarnError::invalid(format!(
                    "sources[{i}] names integration '{integration}', which does not exist: create it first (POST /v1/orgs/self/integrations)"
                ))
            })?;
            if let Some(k) = s.get("kinesis") {
                if found.kinesis().is_none() {
                    return Err(TarnError::invalid(format!(
                        "sources[{i}] is a kinesis source but integration '{integration}' is a {} integration",
                        found.kind()
                    )));
                }
                let stream_name = k
                    .get("stream_name")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        TarnError::invalid(format!("sources[{i}].kinesis needs a stream_name"))
                    })?
                    .to_owned();
                specs.push(SourceSpec::Kinesis {
                    integration,
                    spec: KinesisSpec {
                        stream_name,
                        region: k
                            .get("aws_region")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        start: start_position(k)?,
                    },
                });
            } else if let Some(k) = s.get("kafka") {
                let Some(settings) = found.kafka() else {
                    return Err(TarnError::invalid(format!(
                        "sources[{i}] is a kafka source but integration '{integration}' is a {} integration",
                        found.kind()
                    )));
                };
                let topic = k
                    .get("kafka_topic_name")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .or_else(|| match settings.topics.as_slice() {
                        [only] => Some(only.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        TarnError::invalid(format!("sources[{i}].kafka needs a kafka_topic_name"))
                    })?;
                let group_id = match k.get("consumer_group_id") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(g)) if !g.trim().is_empty() => g.clone(),
                    Some(other) => {
                        return Err(TarnError::invalid(format!(
                            "sources[{i}].kafka.consumer_group_id must be a non-empty string, not {other}; leave it out and tarn names a group for the collection"
                        )));
                    }
                };
                specs.push(SourceSpec::Kafka {
                    integration,
                    spec: KafkaSpec {
                        topic,
                        start: start_position(k)?,
                        group_id,
                    },
                });
            } else {
                return Err(TarnError::invalid(format!(
                    "sources[{i}] needs a \"kinesis\" or a \"kafka\" object"
                )));
            }
        }
        Ok(specs)
    }

    fn transform_for_sql(
        &self,
        sql: &str,
        event_time_info: Option<&tarn_storage::EventTimeInfo>,
    ) -> TarnResult<Arc<dyn IngestTransform>> {
        match &self.transforms {
            Some(f) => f(sql, event_time_info),
            None => Err(TarnError::new(
                tarn_common::ErrorKind::NotImplemented,
                "field_mapping_query needs the SQL layer, which this build does not have",
            )),
        }
    }

    /// The collection's ingest transformation, if it has one.
    pub fn transform(&self, info: &CollectionInfo) -> TarnResult<Option<Arc<dyn IngestTransform>>> {
        match field_mapping_sql(&info.extra)? {
            Some(sql) => self
                .transform_for_sql(&sql, info.options.event_time_info.as_ref())
                .map(Some),
            None => Ok(None),
        }
    }

    /// The ingest-error log of a collection.
    pub fn error_log(&self, info: &CollectionInfo, c: &Collection) -> Arc<IngestErrorLog> {
        self.error_logs
            .lock()
            .entry(info.uuid.clone())
            .or_insert_with(|| Arc::new(IngestErrorLog::new(c.dir().to_path_buf())))
            .clone()
    }

    /// Starts the sources of every collection (at server start).
    pub fn start_all(&self) {
        for (info, c) in self.storage.list_collections(None) {
            if let Err(e) = self.start(&info, &c) {
                tracing::error!(workspace = %info.workspace, collection = %info.name, error = %e.message, "cannot start the collection's sources");
            }
        }
    }

    /// Starts a collection's sources; a collection without sources is left alone.
    pub fn start(&self, info: &CollectionInfo, c: &Arc<Collection>) -> TarnResult<()> {
        let specs = self.validate(&info.extra)?;
        if specs.is_empty() {
            return Ok(());
        }
        let transform = self.transform(info)?;
        let errors = self.error_log(info, c);
        let mut running = Running {
            statuses: Vec::new(),
            tasks: Vec::new(),
        };
        for (i, spec) in specs.into_iter().enumerate() {
            let (label, lag_key) = match &spec {
                SourceSpec::Kinesis { spec, .. } => {
                    (format!("kinesis:{}", spec.stream_name), "lag_ms")
                }
                SourceSpec::Kafka { spec, .. } => (format!("kafka:{}", spec.topic), "lag_messages"),
            };
            let status = SourceStatus::new(lag_key);
            let sink = Arc::new(SourceSink {
                collection: c.clone(),
                event_time_info: info.options.event_time_info.clone(),
                transform: transform.clone(),
                status: status.clone(),
                errors: errors.clone(),
                label,
            });
            let task = match spec {
                SourceSpec::Kinesis { integration, spec } => {
                    let settings =
                        self.integrations
                            .get(&integration)?
                            .kinesis()
                            .ok_or_else(|| {
                                TarnError::invalid(format!(
                                    "integration '{integration}' is not kinesis"
                                ))
                            })?;
                    tokio::spawn(kinesis::run(sink, settings, spec))
                }
                SourceSpec::Kafka {
                    integration,
                    mut spec,
                } => {
                    let settings =
                        self.integrations
                            .get(&integration)?
                            .kafka()
                            .ok_or_else(|| {
                                TarnError::invalid(format!(
                                    "integration '{integration}' is not kafka"
                                ))
                            })?;
                    if spec.group_id.is_empty() {
                        spec.group_id = default_group_id(info, i);
                    }
                    tokio::spawn(kafka::run(sink, settings, spec))
                }
            };
            running.statuses.push(status);
            running.tasks.push(task);
        }
        tracing::info!(workspace = %info.workspace, collection = %info.name, sources = running.tasks.len(), "sources started");
        if let Some(old) = self.running.lock().insert(info.uuid.clone(), running) {
            old.tasks.iter().for_each(JoinHandle::abort);
        }
        Ok(())
    }

    /// Stops a collection's sources (the collection is being dropped, or the server stops).
    pub fn stop(&self, uuid: &str) {
        if let Some(r) = self.running.lock().remove(uuid) {
            r.tasks.iter().for_each(JoinHandle::abort);
        }
        self.error_logs.lock().remove(uuid);
    }

    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().drain() {
            r.tasks.iter().for_each(JoinHandle::abort);
        }
    }

    /// The collection's `sources[]` as responses show them: the request's entries, each
    /// with its live `status`.
    pub fn sources_json(&self, info: &CollectionInfo) -> Value {
        let configured = match info.extra.get("sources") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let running = self.running.lock();
        let statuses = running.get(&info.uuid).map(|r| r.statuses.as_slice());
        let out: Vec<Value> = configured
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                // The group tarn consumes in, so the group's lag shows in Kafka's own tools.
                if let Some(Value::Object(k)) = s.get_mut("kafka")
                    && !k.get("consumer_group_id").is_some_and(Value::is_string)
                {
                    k.insert("consumer_group_id".into(), json!(default_group_id(info, i)));
                }
                if let Some(status) = statuses.and_then(|st| st.get(i)) {
                    s["status"] = status.to_json();
                }
                s
            })
            .collect();
        json!(out)
    }

    /// Records processed by all of a collection's sources, for tests and the console.
    pub fn records_processed(&self, uuid: &str) -> u64 {
        self.running
            .lock()
            .get(uuid)
            .map(|r| r.statuses.iter().map(|s| s.records_processed()).sum())
            .unwrap_or(0)
    }
}

/// The Kafka consumer group of the `index`th source of a collection, unless the request
/// named one (`consumer_group_id`).
fn default_group_id(info: &CollectionInfo, index: usize) -> String {
    format!("tarn-{}-{index}", info.uuid)
}

/// Rewrites Rockset 2.x's flat source form (`{"integration_name", "stream_name", ...}` from
/// its `KinesisSourceWrapper`, `{"integration_name", "kafka_topic_name", ...}` from
/// `KafkaSourceWrapper`) into the nested form (`{"integration_name", "kinesis": {...}}`)
/// that tarn stores and every client reads back.
pub fn normalize_sources(request: &mut Map<String, Value>) {
    let Some(Value::Array(sources)) = request.get_mut("sources") else {
        return;
    };
    for s in sources.iter_mut() {
        let Value::Object(m) = s else { continue };
        if m.contains_key("kinesis") || m.contains_key("kafka") {
            continue;
        }
        let kind = if m.contains_key("stream_name") {
            "kinesis"
        } else if m.contains_key("kafka_topic_name") {
            "kafka"
        } else {
            continue;
        };
        let mut inner = Map::new();
        for key in m.keys().cloned().collect::<Vec<_>>() {
            if key != "integration_name"
                && key != "status"
                && let Some(v) = m.remove(&key)
            {
                inner.insert(key, v);
            }
        }
        m.insert(kind.into(), Value::Object(inner));
    }
}

/// The `field_mapping_query.sql` of a create request, if any.
pub fn field_mapping_sql(request: &Map<String, Value>) -> TarnResult<Option<String>> {
    match request.get("field_mapping_query") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.get("sql").and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() => Ok(Some(s.to_owned())),
            _ => Err(TarnError::invalid(
                "field_mapping_query must be {\"sql\": \"SELECT ... FROM _input\"}",
            )),
        },
    }
}
