//! Integrations: named credentials for Kinesis and Kafka, kept in the data dir with mode 0600.
//!
//! An integration is stored as its whole create request (so settings tarn does not read are
//! kept), and every response goes through [`Integration::public_json`], which removes
//! secrets. Secrets never reach a log line: [`Integration`]'s `Debug` prints only the name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tarn_common::{TarnError, TarnResult};

/// Keys whose values are secrets: kept on disk, never returned.
const SECRET_KEYS: &[&str] = &[
    "aws_secret_access_key",
    "aws_session_token",
    "secret",
    "password",
    "sasl_password",
    "ssl_key_password",
    "ssl_key_pem",
];

/// One integration: its name, kind and settings.
#[derive(Clone, Serialize, Deserialize)]
pub struct Integration {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub created_by: String,
    /// The request's settings: `kinesis` or `kafka` and what they hold.
    pub settings: Map<String, Value>,
}

impl fmt::Debug for Integration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Integration({:?}, {})", self.name, self.kind())
    }
}

/// Kinesis connection settings read from an integration.
#[derive(Clone)]
pub struct KinesisSettings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Kafka connection settings read from an integration.
#[derive(Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: Option<String>,
    pub topics: Vec<String>,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`, timeouts).
    pub client_config: BTreeMap<String, String>,
}

impl Integration {
    pub fn kind(&self) -> &'static str {
        if self.settings.contains_key("kinesis") {
            "kinesis"
        } else if self.settings.contains_key("kafka") {
            "kafka"
        } else {
            "unknown"
        }
    }

    /// The integration as responses show it: every secret removed.
    pub fn public_json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
        });
        for (k, v) in &self.settings {
            let mut v = v.clone();
            redact(&mut v);
            out[k] = v;
        }
        out
    }

    pub fn kinesis(&self) -> Option<KinesisSettings> {
        let k = self.settings.get("kinesis")?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        Some(KinesisSettings {
            access_key_id: s(k.pointer("/aws_access_key/aws_access_key_id")),
            secret_access_key: s(k.pointer("/aws_access_key/aws_secret_access_key")),
            role_arn: s(k.pointer("/aws_role/aws_role_arn")),
            external_id: s(k.pointer("/aws_role/aws_external_id")),
            endpoint: s(k.get("endpoint")),
            region: s(k.get("aws_region")).or_else(|| s(k.get("region"))),
        })
    }

    pub fn kafka(&self) -> Option<KafkaSettings> {
        let k = self.settings.get("kafka")?;
        let mut client_config = BTreeMap::new();
        if let Some(Value::Object(m)) = k.get("client_config") {
            for (key, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                client_config.insert(key.clone(), v);
            }
        }
        // Rockset's Confluent Cloud form: an API key and secret over SASL_SSL/PLAIN.
        if let Some(sc) = k.get("security_config")
            && let (Some(key), Some(secret)) = (
                sc.get("api_key").and_then(Value::as_str),
                sc.get("secret").and_then(Value::as_str),
            )
        {
            client_config
                .entry("security.protocol".into())
                .or_insert_with(|| "SASL_SSL".into());
            client_config
                .entry("sasl.mechanisms".into())
                .or_insert_with(|| "PLAIN".into());
            client_config.insert("sasl.username".into(), key.into());
            client_config.insert("sasl.password".into(), secret.into());
        }
        Some(KafkaSettings {
            bootstrap_servers: k
                .get("bootstrap_servers")
                .and_then(Value::as_str)
                .map(str::to_owned),
            topics: k
                .get("kafka_topic_names")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            client_config,
        })
    }
}

/// Masks secret values, at any depth. The keys stay (Rockset's clients require them in
/// their models); the values become a fixed mask.
fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let secret = SECRET_KEYS.contains(&k.as_str())
                    || k.ends_with(".password")
                    || k.ends_with("key.pem");
                if secret {
                    *val = Value::String(MASK.into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// What a secret shows as.
pub const MASK: &str = "********";

/// Checks an integration create request; the error says what is missing.
fn validate(name: &str, settings: &Map<String, Value>) -> TarnResult<()> {
    tarn_common::names::validate_name("integration", name)?;
    match (settings.get("kinesis"), settings.get("kafka")) {
        (Some(k), None) => {
            let keys = k.get("aws_access_key");
            let role = k.get("aws_role");
            if keys.is_none() && role.is_none() {
                return Err(TarnError::invalid(
                    "a kinesis integration needs \"aws_access_key\": {\"aws_access_key_id\", \"aws_secret_access_key\"} or \"aws_role\": {\"aws_role_arn\"}",
                ));
            }
            if let Some(keys) = keys
                && (keys
                    .get("aws_access_key_id")
                    .and_then(Value::as_str)
                    .is_none()
                    || keys
                        .get("aws_secret_access_key")
                        .and_then(Value::as_str)
                        .is_none())
            {
                return Err(TarnError::invalid(
                    "kinesis.aws_access_key needs both aws_access_key_id and aws_secret_access_key as strings",
                ));
            }
            if let Some(role) = role
                && role.get("aws_role_arn").and_then(Value::as_str).is_none()
            {
                return Err(TarnError::invalid(
                    "kinesis.aws_role needs aws_role_arn as a string",
                ));
            }
            Ok(())
        }
        (None, Some(k)) => {
            if let Some(f) = k.get("kafka_data_format").and_then(Value::as_str)
                && !f.eq_ignore_ascii_case("json")
            {
                return Err(TarnError::invalid(format!(
                    "kafka_data_format '{f}' is not supported: tarn reads JSON messages (\"kafka_data_format\": \"JSON\")"
                )));
            }
            Ok(())
        }
        (Some(_), Some(_)) => Err(TarnError::invalid(
            "an integration is either kinesis or kafka, not both",
        )),
        (None, None) => Err(TarnError::invalid(
            "an integration needs a \"kinesis\" or a \"kafka\" object",
        )),
    }
}

/// The integrations of a data dir, in `integrations.json` (mode 0600).
pub struct IntegrationStore {
    path: PathBuf,
    items: Mutex<BTreeMap<String, Integration>>,
}

impl IntegrationStore {
    pub fn open(data_dir: &Path) -> TarnResult<IntegrationStore> {
        let path = data_dir.join("integrations.json");
        let items = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| TarnError::internal(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(IntegrationStore {
            path,
            items: Mutex::new(items),
        })
    }

    /// Creates an integration from a request body (`name`, `description`, and `kinesis` or
    /// `kafka`).
    pub fn create(&self, mut body: Map<String, Value>) -> TarnResult<Integration> {
        let name = match body.remove("name") {
            Some(Value::String(s)) => s,
            _ => {
                return Err(TarnError::invalid("an integration needs a \"name\" string"));
            }
        };
        let description = match body.remove("description") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        validate(&name, &body)?;
        let integration = Integration {
            name: name.clone(),
            description,
            created_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            created_by: "tarn".into(),
            settings: body,
        };
        let mut items = self.items.lock();
        if items.contains_key(&name) {
            return Err(TarnError::already_exists(format!(
                "integration '{name}' already exists"
            )));
        }
        items.insert(name.clone(), integration.clone());
        if let Err(e) = self.save(&items) {
            items.remove(&name);
            return Err(e);
        }
        Ok(integration)
    }

    pub fn get(&self, name: &str) -> TarnResult<Integration> {
        self.items
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| TarnError::not_found(format!("integration '{name}' does not exist")))
    }

    pub fn list(&self) -> Vec<Integration> {
        self.items.lock().values().cloned().collect()
    }

    pub fn delete(&self, name: &str) -> TarnResult<Integration> {
        let mut items = self.items.lock();
        let Some(removed) = items.remove(name) else {
            return Err(TarnError::not_found(format!(
                "integration '{name}' does not exist"
            )));
        };
        if let Err(e) = self.save(&items) {
            items.insert(name.to_owned(), removed);
            return Err(e);
        }
        Ok(removed)
    }

    /// Writes the file atomically, with mode 0600.
    fn save(&self, items: &BTreeMap<String, Integration>) -> TarnResult<()> {
        let bytes = serde_json::to_vec_pretty(items)
            .map_err(|e| TarnError::internal(format!("cannot encode integrations: {e}")))?;
        tarn_storage::collection::write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn secrets_are_stored_private_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let store = IntegrationStore::open(dir.path()).unwrap();
        let i = store
            .create(body(json!({"name": "aws", "kinesis": {"aws_access_key": {
                "aws_access_key_id": "AKIA1", "aws_secret_access_key": "s3cr3t"}}})))
            .unwrap();
        let shown = i.public_json().to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("AKIA1"), "{shown}");
        assert!(!format!("{i:?}").contains("s3cr3t"));
        let path = dir.path().join("integrations.json");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // Kept across a reopen, with the secret usable.
        let store = IntegrationStore::open(dir.path()).unwrap();
        let k = store.get("aws").unwrap().kinesis().unwrap();
        assert_eq!(k.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(
            store
                .create(body(json!({"name": "aws", "kafka": {}})))
                .unwrap_err()
                .kind,
            tarn_common::ErrorKind::AlreadyExists
        );
        store.delete("aws").unwrap();
        assert!(store.get("aws").is_err());
    }

    #[test]
    fn bad_requests_say_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = IntegrationStore::open(dir.path()).unwrap();
        let e = store
            .create(body(json!({"name": "a", "kinesis": {}})))
            .unwrap_err();
        assert!(e.message.contains("aws_access_key"), "{}", e.message);
        let e = store.create(body(json!({"name": "a"}))).unwrap_err();
        assert!(e.message.contains("kinesis"), "{}", e.message);
        let e = store
            .create(body(
                json!({"name": "a", "kafka": {"kafka_data_format": "AVRO"}}),
            ))
            .unwrap_err();
        assert!(e.message.contains("JSON"), "{}", e.message);
    }

    #[test]
    fn kafka_security_config_becomes_sasl_settings_and_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = IntegrationStore::open(dir.path()).unwrap();
        let i = store
            .create(body(json!({"name": "k", "kafka": {
                "bootstrap_servers": "b:9092", "kafka_topic_names": ["t"],
                "security_config": {"api_key": "key", "secret": "pw"},
                "client_config": {"sasl.password": "pw2", "session.timeout.ms": 1000}}})))
            .unwrap();
        let k = i.kafka().unwrap();
        assert_eq!(k.client_config["sasl.password"], "pw");
        assert_eq!(k.client_config["session.timeout.ms"], "1000");
        assert_eq!(k.topics, vec!["t".to_string()]);
        let shown = i.public_json().to_string();
        assert!(!shown.contains("pw"), "{shown}");
    }
}
