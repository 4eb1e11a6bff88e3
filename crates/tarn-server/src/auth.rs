//! API keys: created by `tarn apikey create` or Rockset's REST endpoints, stored hashed
//! (SHA-256) in `apikeys.json` with mode 0600, and checked on every API request.
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
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
