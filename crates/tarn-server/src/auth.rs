//! API keys: created by `tarn apikey create` or Rockset's REST endpoints, stored hashed
//! (SHA-256) in `apikeys.json` with mode 0600, and checked on every API request.
//!
//! Each key also keeps a SCRAM-SHA-256 verifier (salt, iteration count, `StoredKey`,
//! `ServerKey`, as Postgres keeps for a password) so the Postgres endpoint can authenticate
//! the key by SCRAM without ever holding it; key files written before verifiers existed load
//! without them.
//!
//! A request carries its key as `Authorization: ApiKey KEY` (Rockset's form), `Bearer KEY`,
//! or `?apikey=KEY` (for browsers' EventSource, which cannot set headers). The server runs
//! without keys only when it listens on loopback and no key exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tarn_common::{ErrorKind, TarnError, TarnResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The key's last four characters, to tell keys apart in listings.
    pub last4: String,
    pub created_at: String,
    /// The key's SCRAM-SHA-256 verifier; absent in key files from before it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramVerifier>,
}

/// The SCRAM-SHA-256 iteration count of new verifiers (Postgres's default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier (RFC 5802, RFC 7677) of a key, byte strings in hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: String,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: String,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: String,
}

impl ScramVerifier {
    /// The verifier of `key` with a fresh random salt.
    pub fn new(key: &str) -> Option<ScramVerifier> {
        use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
        let salt = rand::random::<[u8; 16]>().to_vec();
        let iterations = SCRAM_ITERATIONS as usize;
        let salted = gen_salted_password(key, &salt, iterations);
        match ScramSecret::verifier_from_salted_password(salt.clone(), salted, iterations) {
            ScramSecret::Verifier {
                stored_key,
                server_key,
                ..
            } => Some(ScramVerifier {
                iterations: SCRAM_ITERATIONS,
                salt: hex(&salt),
                stored_key: hex(&stored_key),
                server_key: hex(&server_key),
            }),
            // Not built by `verifier_from_salted_password`.
            ScramSecret::SaltedPassword { .. } => None,
        }
    }

    /// The verifier as bytes; `None` when a field is not hex (a hand-edited key file).
    pub fn decode(&self) -> Option<ScramKeys> {
        Some(ScramKeys {
            salt: unhex(&self.salt)?,
            iterations: self.iterations as usize,
            stored_key: unhex(&self.stored_key)?,
            server_key: unhex(&self.server_key)?,
        })
    }
}

/// A decoded [`ScramVerifier`], as SCRAM's server side uses it.
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: usize,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

impl KeyRecord {
    pub fn public_json(&self) -> Value {
        json!({
            "name": self.name,
            "key": format!("****{}", self.last4),
            "created_at": self.created_at,
            "created_by": "tarn",
            "state": "ACTIVE",
        })
    }
}

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Loaded {
    keys: BTreeMap<String, KeyRecord>,
    modified: Option<SystemTime>,
}

/// The keys of a data dir. Changes made by another process (the `tarn apikey` command
/// while the server runs) are seen at the next request.
pub struct ApiKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl ApiKeys {
    pub fn open(data_dir: &Path) -> TarnResult<ApiKeys> {
        let keys = ApiKeys {
            path: data_dir.join("apikeys.json"),
            loaded: Mutex::new(Loaded {
                keys: BTreeMap::new(),
                modified: None,
            }),
        };
        keys.refresh()?;
        Ok(keys)
    }

    fn refresh(&self) -> TarnResult<()> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut l = self.loaded.lock();
        if modified == l.modified && (modified.is_some() || l.keys.is_empty()) {
            return Ok(());
        }
        l.keys = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                TarnError::internal(format!("{} is corrupt: {e}", self.path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        l.modified = modified;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        let _ = self.refresh();
        self.loaded.lock().keys.is_empty()
    }

    /// Whether `key` is a current key.
    pub fn verify(&self, key: &str) -> bool {
        if let Err(e) = self.refresh() {
            tracing::error!(error = %e.message, "cannot read the API keys");
            return false;
        }
        let hash = sha256_hex(key);
        self.loaded
            .lock()
            .keys
            .values()
            .any(|k| same(&k.hash, &hash))
    }

    /// The key named `name`, if it exists.
    pub fn named(&self, name: &str) -> Option<KeyRecord> {
        if let Err(e) = self.refresh() {
            tracing::error!(error = %e.message, "cannot read the API keys");
            return None;
        }
        self.loaded.lock().keys.get(name).cloned()
    }

    /// Whether `key` is the current key named `name`.
    pub fn verify_named(&self, name: &str, key: &str) -> bool {
        self.named(name)
            .is_some_and(|k| same(&k.hash, &sha256_hex(key)))
    }

    /// Creates a key; the returned text is the only time the key is shown.
    pub fn create(&self, name: &str) -> TarnResult<(KeyRecord, String)> {
        tarn_common::names::validate_name("API key", name)?;
        self.refresh()?;
        let mut l = self.loaded.lock();
        if l.keys.contains_key(name) {
            return Err(TarnError::already_exists(format!(
                "API key '{name}' already exists"
            )));
        }
        let secret: String = (0..40)
            .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
            .collect();
        let key = format!("tarn_{secret}");
        let record = KeyRecord {
            name: name.to_owned(),
            hash: sha256_hex(&key),
            last4: key[key.len() - 4..].to_owned(),
            created_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            scram: ScramVerifier::new(&key),
        };
        l.keys.insert(name.to_owned(), record.clone());
        if let Err(e) = self.save(&mut l) {
            l.keys.remove(name);
            return Err(e);
        }
        Ok((record, key))
    }

    pub fn list(&self) -> Vec<KeyRecord> {
        let _ = self.refresh();
        self.loaded.lock().keys.values().cloned().collect()
    }

    pub fn revoke(&self, name: &str) -> TarnResult<KeyRecord> {
        self.refresh()?;
        let mut l = self.loaded.lock();
        let removed = l
            .keys
            .remove(name)
            .ok_or_else(|| TarnError::not_found(format!("API key '{name}' does not exist")))?;
        if let Err(e) = self.save(&mut l) {
            l.keys.insert(name.to_owned(), removed);
            return Err(e);
        }
        Ok(removed)
    }

    fn save(&self, l: &mut Loaded) -> TarnResult<()> {
        let bytes = serde_json::to_vec_pretty(&l.keys)
            .map_err(|e| TarnError::internal(format!("cannot encode API keys: {e}")))?;
        tarn_storage::collection::write_private(&self.path, &bytes)?;
        l.modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        Ok(())
    }
}

/// The key a request carries, if any.
pub fn request_key(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        for scheme in ["ApiKey ", "Apikey ", "apikey ", "Bearer ", "bearer "] {
            if let Some(k) = v.strip_prefix(scheme) {
                return Some(k.trim().to_owned());
            }
        }
        return Some(v.to_owned());
    }
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("apikey=").map(str::to_owned))
}

/// Whether a request may go on: `Ok` or the 401 to send.
pub fn check(
    keys: &ApiKeys,
    open_without_keys: bool,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
) -> TarnResult<()> {
    if keys.is_empty() {
        if open_without_keys {
            return Ok(());
        }
        return Err(TarnError::new(
            ErrorKind::Auth,
            "this server listens beyond loopback and has no API key: create one with `tarn apikey create NAME` and send it as `Authorization: ApiKey KEY`",
        ));
    }
    match request_key(headers, query) {
        Some(k) if keys.verify(&k) => Ok(()),
        Some(_) => Err(TarnError::new(
            ErrorKind::Auth,
            "the API key is not valid (revoked or mistyped)",
        )),
        None => Err(TarnError::new(
            ErrorKind::Auth,
            "an API key is required: send `Authorization: ApiKey KEY`",
        )),
    }
}

// ---- Rockset's REST endpoints for keys (`/users/{user}/apikeys`; tarn has one user). ----

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::ApiResult;

#[derive(Deserialize)]
struct CreateKey {
    name: String,
}

pub async fn create_key(
    State(st): State<AppState>,
    UrlPath(_user): UrlPath<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let req: CreateKey = crate::routes::parse_json(&crate::routes::read_body(body).await?)?;
    let keys = st.keys.clone();
    let (record, key) = tokio::task::spawn_blocking(move || keys.create(&req.name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    let mut data = record.public_json();
    data["key"] = json!(key);
    tracing::info!(name = %record.name, "API key created");
    Ok(Json(json!({"data": data})))
}

pub async fn list_keys(
    State(st): State<AppState>,
    UrlPath(_user): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let data: Vec<Value> = st.keys.list().iter().map(KeyRecord::public_json).collect();
    Ok(Json(json!({"data": data})))
}

pub async fn get_key(
    State(st): State<AppState>,
    UrlPath((_user, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let k = st
        .keys
        .list()
        .into_iter()
        .find(|k| k.name == name)
        .ok_or_else(|| TarnError::not_found(format!("API key '{name}' does not exist")))?;
    Ok(Json(json!({"data": k.public_json()})))
}

pub async fn revoke_key(
    State(st): State<AppState>,
    UrlPath((_user, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let keys = st.keys.clone();
    let k = tokio::task::spawn_blocking(move || keys.revoke(&name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    tracing::info!(name = %k.name, "API key revoked");
    Ok(Json(json!({"data": k.public_json()})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_checked_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        assert!(keys.is_empty());
        let (rec, key) = keys.create("ci").unwrap();
        let stored = std::fs::read_to_string(dir.path().join("apikeys.json")).unwrap();
        assert!(!stored.contains(&key), "the key itself is never stored");
        assert!(stored.contains(&rec.hash));
        assert!(keys.verify(&key));
        assert!(!keys.verify("tarn_wrong"));
        // Another process's view sees the key, then its revocation.
        let other = ApiKeys::open(dir.path()).unwrap();
        assert!(other.verify(&key));
        keys.revoke("ci").unwrap();
        assert!(!other.verify(&key));
        assert!(keys.revoke("ci").is_err());
    }

    #[test]
    fn keys_carry_a_scram_verifier_and_old_files_load_without_one() {
        use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        let (rec, key) = keys.create("grafana").unwrap();
        let v = rec.scram.expect("a verifier");
        let ScramKeys {
            salt,
            iterations,
            stored_key,
            server_key,
        } = v.decode().unwrap();
        assert_eq!((salt.len(), iterations), (16, 4096));
        let salted = gen_salted_password(&key, &salt, iterations);
        let ScramSecret::Verifier {
            stored_key: s,
            server_key: k,
            ..
        } = ScramSecret::verifier_from_salted_password(salt, salted, iterations)
        else {
            panic!("a verifier")
        };
        assert_eq!((s, k), (stored_key, server_key));
        assert!(keys.verify_named("grafana", &key));
        assert!(!keys.verify_named("other", &key));
        assert!(!keys.verify_named("grafana", "tarn_wrong"));
        // A key file from before verifiers: the key still verifies, without SCRAM.
        let old = format!(
            r#"{{"old": {{"name": "old", "hash": "{}", "last4": "abcd", "created_at": "2026-01-01T00:00:00Z"}}}}"#,
            sha256_hex("tarn_old")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apikeys.json"), old).unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        assert!(keys.verify("tarn_old") && keys.verify_named("old", "tarn_old"));
        assert!(keys.named("old").unwrap().scram.is_none());
        let bad = ScramVerifier {
            iterations: 4096,
            salt: "zz".into(),
            stored_key: String::new(),
            server_key: String::new(),
        };
        assert!(bad.decode().is_none());
    }

    #[test]
    fn requests_without_a_valid_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        let mut h = axum::http::HeaderMap::new();
        assert!(check(&keys, true, &h, None).is_ok());
        assert_eq!(
            check(&keys, false, &h, None).unwrap_err().kind,
            ErrorKind::Auth
        );
        let (_, key) = keys.create("k").unwrap();
        assert_eq!(
            check(&keys, true, &h, None).unwrap_err().kind,
            ErrorKind::Auth
        );
        h.insert("authorization", format!("ApiKey {key}").parse().unwrap());
        assert!(check(&keys, true, &h, None).is_ok());
        let q = format!("x=1&apikey={key}");
        assert!(check(&keys, true, &axum::http::HeaderMap::new(), Some(&q)).is_ok());
    }
}
