//! Query lambdas: named SQL with default parameters, in immutable versions, with tags, kept
//! in `lambdas.json` and shown in Rockset's shapes (`QueryLambda`, `QueryLambdaVersion`,
//! `QueryLambdaTag`). Tags, versions and whole lambdas can be deleted; a version that a tag
//! other than `latest` names cannot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tarn_common::{TarnError, TarnResult};
use tarn_sql::QueryParameter;

/// The tag that always names the newest version.
pub const LATEST: &str = "latest";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaSql {
    pub query: String,
    #[serde(default)]
    pub default_parameters: Vec<QueryParameter>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub sql: LambdaSql,
    pub collections: Vec<String>,
    pub created_at: String,
    #[serde(default)]
    pub last_executed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lambda {
    pub workspace: String,
    pub name: String,
    pub versions: Vec<Version>,
    pub tags: BTreeMap<String, String>,
    pub last_updated: String,
}

impl Lambda {
    pub fn version(&self, v: &str) -> TarnResult<&Version> {
        self.versions
            .iter()
            .find(|x| x.version == v)
            .ok_or_else(|| {
                TarnError::not_found(format!(
                    "query lambda '{}.{}' has no version '{v}'",
                    self.workspace, self.name
                ))
            })
    }

    pub fn tagged(&self, tag: &str) -> TarnResult<&Version> {
        let v = self.tags.get(tag).ok_or_else(|| {
            TarnError::not_found(format!(
                "query lambda '{}.{}' has no tag '{tag}'",
                self.workspace, self.name
            ))
        })?;
        self.version(v)
    }

    pub fn latest(&self) -> &Version {
        self.versions.last().expect("a lambda has a version")
    }

    pub fn version_json(&self, v: &Version) -> Value {
        let mut out = json!({
            "workspace": self.workspace,
            "name": self.name,
            "version": v.version,
            "description": v.description,
            "sql": v.sql,
            "collections": v.collections,
            "created_at": v.created_at,
            "created_by": "tarn",
            "state": "ACTIVE",
            "stats": {},
        });
        if let Some(t) = &v.last_executed {
            out["stats"] = json!({"last_executed": t, "last_executed_by": "tarn"});
        }
        out
    }

    pub fn lambda_json(&self) -> Value {
        let latest = self.latest();
        json!({
            "workspace": self.workspace,
            "name": self.name,
            "collections": latest.collections,
            "last_updated": self.last_updated,
            "last_updated_by": "tarn",
            "latest_version": self.version_json(latest),
            "version_count": self.versions.len(),
        })
    }

    pub fn tag_json(&self, tag: &str) -> TarnResult<Value> {
        Ok(json!({"tag_name": tag, "version": self.version_json(self.tagged(tag)?)}))
    }
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// A version id as Rockset shows them: 16 hex characters, from the SQL and the time.
fn version_id(sql: &str, count: usize) -> String {
    let digest = Sha256::digest(format!("{sql}\u{0}{count}\u{0}{}", now()).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// All query lambdas of a data dir.
pub struct LambdaStore {
    path: PathBuf,
    items: Mutex<BTreeMap<(String, String), Lambda>>,
}

impl LambdaStore {
    pub fn open(data_dir: &Path) -> TarnResult<LambdaStore> {
        let path = data_dir.join("lambdas.json");
        let list: Vec<Lambda> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| TarnError::internal(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(LambdaStore {
            path,
            items: Mutex::new(
                list.into_iter()
                    .map(|l| ((l.workspace.clone(), l.name.clone()), l))
                    .collect(),
            ),
        })
    }

    pub fn get(&self, ws: &str, name: &str) -> TarnResult<Lambda> {
        self.items
            .lock()
            .get(&(ws.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                TarnError::not_found(format!("query lambda '{ws}.{name}' does not exist"))
            })
    }

    pub fn list(&self, ws: Option<&str>) -> Vec<Lambda> {
        self.items
            .lock()
            .values()
            .filter(|l| ws.is_none_or(|w| w == l.workspace))
            .cloned()
            .collect()
    }

    /// Creates a lambda with its first version, or (`new_version`) adds a version to an
    /// existing one. The `latest` tag moves to the new version.
    pub fn add_version(
        &self,
        ws: &str,
        name: &str,
        description: &str,
        sql: LambdaSql,
        collections: Vec<String>,
        new_version: bool,
    ) -> TarnResult<Lambda> {
        tarn_common::names::validate_name("query lambda", name)?;
        let key = (ws.to_owned(), name.to_owned());
        let mut items = self.items.lock();
        let before = items.get(&key).cloned();
        match (&before, new_version) {
            (Some(_), false) => {
                return Err(TarnError::already_exists(format!(
                    "query lambda '{ws}.{name}' already exists: add a version instead"
                )));
            }
            (None, true) => {
                return Err(TarnError::not_found(format!(
                    "query lambda '{ws}.{name}' does not exist"
                )));
            }
            _ => {}
        }
        let mut lambda = before.clone().unwrap_or_else(|| Lambda {
            workspace: ws.to_owned(),
            name: name.to_owned(),
            versions: Vec::new(),
            tags: BTreeMap::new(),
            last_updated: now(),
        });
        let id = version_id(&sql.query, lambda.versions.len());
        lambda.versions.push(Version {
            version: id.clone(),
            description: description.to_owned(),
            sql,
            collections,
            created_at: now(),
            last_executed: None,
        });
        lambda.tags.insert(LATEST.into(), id);
        lambda.last_updated = now();
        items.insert(key.clone(), lambda.clone());
        if let Err(e) = self.save(&items) {
            match before {
                Some(b) => items.insert(key, b),
                None => items.remove(&key),
            };
            return Err(e);
        }
        Ok(lambda)
    }

    pub fn tag(&self, ws: &str, name: &str, tag: &str, version: &str) -> TarnResult<Lambda> {
        if tag.is_empty() {
            return Err(TarnError::invalid("tag_name must not be empty"));
        }
        let key = (ws.to_owned(), name.to_owned());
        let mut items = self.items.lock();
        let before = items.get(&key).cloned().ok_or_else(|| {
            TarnError::not_found(format!("query lambda '{ws}.{name}' does not exist"))
        })?;
        before.version(version)?;
        let mut lambda = before.clone();
        lambda.tags.insert(tag.to_owned(), version.to_owned());
        items.insert(key.clone(), lambda.clone());
        if let Err(e) = self.save(&items) {
            items.insert(key, before);
            return Err(e);
        }
        Ok(lambda)
    }

    /// Deletes a tag; returns the lambda as it was. `latest` always names the newest
    /// version, so it cannot be deleted.
    pub fn delete_tag(&self, ws: &str, name: &str, tag: &str) -> TarnResult<Lambda> {
        if tag == LATEST {
            return Err(TarnError::invalid(format!(
                "the tag '{LATEST}' of query lambda '{ws}.{name}' always names its newest version and cannot be deleted"
            )));
        }
        self.change(ws, name, |l| {
            l.tagged(tag)?;
            l.tags.remove(tag);
            Ok(())
        })
    }

    /// Deletes a version; returns the lambda as it was. A version that a tag other than
    /// `latest` names is refused (the error names the tags), and so is the only version
    /// (delete the lambda instead); when the newest version goes, `latest` moves to the
    /// newest that remains.
    pub fn delete_version(&self, ws: &str, name: &str, version: &str) -> TarnResult<Lambda> {
        self.change(ws, name, |l| {
            l.version(version)?;
            let tags: Vec<String> = l
                .tags
                .iter()
                .filter(|(t, v)| *t != LATEST && *v == version)
                .map(|(t, _)| format!("'{t}'"))
                .collect();
            if !tags.is_empty() {
                return Err(TarnError::invalid(format!(
                    "version '{version}' of query lambda '{ws}.{name}' is tagged {}: delete the tag{} or move {} to another version first",
                    tags.join(", "),
                    if tags.len() > 1 { "s" } else { "" },
                    if tags.len() > 1 { "them" } else { "it" },
                )));
            }
            if l.versions.len() == 1 {
                return Err(TarnError::invalid(format!(
                    "version '{version}' is the only version of query lambda '{ws}.{name}': delete the query lambda instead"
                )));
            }
            l.versions.retain(|v| v.version != version);
            let newest = l.latest().version.clone();
            l.tags.insert(LATEST.into(), newest);
            l.last_updated = now();
            Ok(())
        })
    }

    /// Applies `f` to a copy of a lambda and saves it; on any error nothing changes.
    /// Returns the lambda as it was before.
    fn change(
        &self,
        ws: &str,
        name: &str,
        f: impl FnOnce(&mut Lambda) -> TarnResult<()>,
    ) -> TarnResult<Lambda> {
        let key = (ws.to_owned(), name.to_owned());
        let mut items = self.items.lock();
        let before = items.get(&key).cloned().ok_or_else(|| {
            TarnError::not_found(format!("query lambda '{ws}.{name}' does not exist"))
        })?;
        let mut lambda = before.clone();
        f(&mut lambda)?;
        items.insert(key.clone(), lambda);
        if let Err(e) = self.save(&items) {
            items.insert(key, before);
            return Err(e);
        }
        Ok(before)
    }

    pub fn delete(&self, ws: &str, name: &str) -> TarnResult<Lambda> {
        let key = (ws.to_owned(), name.to_owned());
        let mut items = self.items.lock();
        let removed = items.remove(&key).ok_or_else(|| {
            TarnError::not_found(format!("query lambda '{ws}.{name}' does not exist"))
        })?;
        if let Err(e) = self.save(&items) {
            items.insert(key, removed);
            return Err(e);
        }
        Ok(removed)
    }

    /// Records an execution (best effort: a failure to save is logged, not returned).
    pub fn executed(&self, ws: &str, name: &str, version: &str) {
        let mut items = self.items.lock();
        if let Some(l) = items.get_mut(&(ws.to_owned(), name.to_owned()))
            && let Some(v) = l.versions.iter_mut().find(|v| v.version == version)
        {
            v.last_executed = Some(now());
        }
        if let Err(e) = self.save(&items) {
            tracing::warn!(error = %e.message, "cannot record a lambda execution");
        }
    }

    fn save(&self, items: &BTreeMap<(String, String), Lambda>) -> TarnResult<()> {
        let list: Vec<&Lambda> = items.values().collect();
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| TarnError::internal(format!("cannot encode query lambdas: {e}")))?;
        tarn_storage::collection::write_atomic(&self.path, &bytes)
    }
}

// ---- routes ----------------------------------------------------------------------------

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::ApiResult;
use crate::routes::{parse_json, query_response, read_body};

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    sql: LambdaSql,
}

/// Checks a lambda's SQL by planning it with its default parameters, and lists the
/// collections it reads.
async fn check_sql(st: &AppState, sql: &LambdaSql) -> TarnResult<Vec<String>> {
    let req = tarn_sql::QueryRequest {
        sql: format!(
            "SELECT * FROM ({}) AS __lambda LIMIT 0",
            sql.query.trim().trim_end_matches(';')
        ),
        parameters: sql.default_parameters.clone(),
        default_row_limit: None,
    };
    match st.engine.query(&req).await {
        Ok(out) => Ok(out.collections),
        Err(e) if e.message.contains("parameter") => Ok(Vec::new()),
        Err(e) => Err(TarnError {
            message: format!("the query lambda's SQL is not valid: {}", e.message),
            ..e
        }),
    }
}

pub async fn create(
    State(st): State<AppState>,
    UrlPath(ws): UrlPath<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    st.storage.get_workspace(&ws)?;
    let req: CreateBody = parse_json(&read_body(body).await?)?;
    let name = req
        .name
        .ok_or_else(|| TarnError::invalid("a query lambda needs a \"name\""))?;
    let collections = check_sql(&st, &req.sql).await?;
    let store = st.lambdas.clone();
    let description = req.description.unwrap_or_default();
    let l = tokio::task::spawn_blocking(move || {
        store.add_version(&ws, &name, &description, req.sql, collections, false)
    })
    .await
    .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": l.version_json(l.latest())})))
}

pub async fn add_version(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    st.lambdas.get(&ws, &name)?;
    let req: CreateBody = parse_json(&read_body(body).await?)?;
    let collections = check_sql(&st, &req.sql).await?;
    let store = st.lambdas.clone();
    let description = req.description.unwrap_or_default();
    let l = tokio::task::spawn_blocking(move || {
        store.add_version(&ws, &name, &description, req.sql, collections, true)
    })
    .await
    .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": l.version_json(l.latest())})))
}

pub async fn list_all(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let data: Vec<Value> = st
        .lambdas
        .list(None)
        .iter()
        .map(Lambda::lambda_json)
        .collect();
    Ok(Json(json!({"data": data})))
}

pub async fn list_workspace(
    State(st): State<AppState>,
    UrlPath(ws): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    st.storage.get_workspace(&ws)?;
    let data: Vec<Value> = st
        .lambdas
        .list(Some(&ws))
        .iter()
        .map(Lambda::lambda_json)
        .collect();
    Ok(Json(json!({"data": data})))
}

pub async fn get_lambda(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        json!({"data": st.lambdas.get(&ws, &name)?.lambda_json()}),
    ))
}

pub async fn delete_lambda(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let store = st.lambdas.clone();
    let l = tokio::task::spawn_blocking(move || store.delete(&ws, &name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": l.lambda_json()})))
}

pub async fn list_versions(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let l = st.lambdas.get(&ws, &name)?;
    let data: Vec<Value> = l.versions.iter().rev().map(|v| l.version_json(v)).collect();
    Ok(Json(json!({"data": data})))
}

pub async fn get_version(
    State(st): State<AppState>,
    UrlPath((ws, name, version)): UrlPath<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let l = st.lambdas.get(&ws, &name)?;
    Ok(Json(json!({"data": l.version_json(l.version(&version)?)})))
}

#[derive(Deserialize)]
struct TagBody {
    tag_name: String,
    version: String,
}

pub async fn create_tag(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let req: TagBody = parse_json(&read_body(body).await?)?;
    let store = st.lambdas.clone();
    let tag = req.tag_name.clone();
    let l = tokio::task::spawn_blocking(move || store.tag(&ws, &name, &req.tag_name, &req.version))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": l.tag_json(&tag)?})))
}

pub async fn list_tags(
    State(st): State<AppState>,
    UrlPath((ws, name)): UrlPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let l = st.lambdas.get(&ws, &name)?;
    let data = l
        .tags
        .keys()
        .map(|t| l.tag_json(t))
        .collect::<TarnResult<Vec<Value>>>()?;
    Ok(Json(json!({"data": data})))
}

pub async fn get_tag(
    State(st): State<AppState>,
    UrlPath((ws, name, tag)): UrlPath<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        json!({"data": st.lambdas.get(&ws, &name)?.tag_json(&tag)?}),
    ))
}

/// `DELETE .../lambdas/{name}/tags/{tag}`: answers the deleted tag (`QueryLambdaTag`).
pub async fn delete_tag(
    State(st): State<AppState>,
    UrlPath((ws, name, tag)): UrlPath<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let store = st.lambdas.clone();
    let t = tag.clone();
    let before = tokio::task::spawn_blocking(move || store.delete_tag(&ws, &name, &t))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": before.tag_json(&tag)?})))
}

/// `DELETE .../lambdas/{name}/version/{version}` (the path Rockset's clients use) and
/// `.../versions/{version}`: answers the deleted version (`QueryLambdaVersion`).
pub async fn delete_version(
    State(st): State<AppState>,
    UrlPath((ws, name, version)): UrlPath<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let store = st.lambdas.clone();
    let v = version.clone();
    let before = tokio::task::spawn_blocking(move || store.delete_version(&ws, &name, &v))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(
        json!({"data": before.version_json(before.version(&version)?)}),
    ))
}

#[derive(Deserialize, Default)]
struct ExecuteBody {
    #[serde(default)]
    parameters: Vec<QueryParameter>,
    #[serde(default)]
    default_row_limit: Option<usize>,
}

/// Runs a version: the request's parameters override the defaults by name.
async fn execute(st: &AppState, l: &Lambda, v: &Version, body: Body) -> TarnResult<Value> {
    let bytes = read_body(body).await?;
    let req: ExecuteBody = parse_json(&bytes)?;
    let mut params = v.sql.default_parameters.clone();
    for p in req.parameters {
        params.retain(|d| d.name != p.name);
        params.push(p);
    }
    let q = tarn_sql::QueryRequest {
        sql: v.sql.query.clone(),
        parameters: params,
        default_row_limit: req.default_row_limit,
    };
    let resp = query_response(st, &q).await?;
    st.lambdas.executed(&l.workspace, &l.name, &v.version);
    Ok(resp)
}

pub async fn execute_version(
    State(st): State<AppState>,
    UrlPath((ws, name, version)): UrlPath<(String, String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let l = st.lambdas.get(&ws, &name)?;
    let v = l.version(&version)?.clone();
    Ok(Json(execute(&st, &l, &v, body).await?))
}

pub async fn execute_tag(
    State(st): State<AppState>,
    UrlPath((ws, name, tag)): UrlPath<(String, String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let l = st.lambdas.get(&ws, &name)?;
    let v = l.tagged(&tag)?.clone();
    Ok(Json(execute(&st, &l, &v, body).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(q: &str) -> LambdaSql {
        LambdaSql {
            query: q.into(),
            default_parameters: Vec::new(),
        }
    }

    #[test]
    fn versions_are_immutable_and_tags_move() {
        let dir = tempfile::tempdir().unwrap();
        let s = LambdaStore::open(dir.path()).unwrap();
        let l = s
            .add_version("commons", "top", "", sql("SELECT 1"), vec![], false)
            .unwrap();
        let v1 = l.latest().version.clone();
        assert!(
            s.add_version("commons", "top", "", sql("SELECT 1"), vec![], false)
                .is_err()
        );
        let l = s
            .add_version("commons", "top", "two", sql("SELECT 2"), vec![], true)
            .unwrap();
        let v2 = l.latest().version.clone();
        assert_ne!(v1, v2);
        assert_eq!(l.version(&v1).unwrap().sql.query, "SELECT 1");
        assert_eq!(l.tagged(LATEST).unwrap().version, v2);
        s.tag("commons", "top", "prod", &v1).unwrap();
        let s = LambdaStore::open(dir.path()).unwrap();
        let l = s.get("commons", "top").unwrap();
        assert_eq!(l.tagged("prod").unwrap().sql.query, "SELECT 1");
        assert!(s.tag("commons", "top", "x", "nope").is_err());
    }

    #[test]
    fn tags_and_versions_are_deleted_durably() {
        let dir = tempfile::tempdir().unwrap();
        let s = LambdaStore::open(dir.path()).unwrap();
        let v = |l: Lambda| l.latest().version.clone();
        let v1 = v(s
            .add_version("commons", "q", "", sql("SELECT 1"), vec![], false)
            .unwrap());
        let v2 = v(s
            .add_version("commons", "q", "", sql("SELECT 2"), vec![], true)
            .unwrap());
        let v3 = v(s
            .add_version("commons", "q", "", sql("SELECT 3"), vec![], true)
            .unwrap());
        s.tag("commons", "q", "prod", &v1).unwrap();
        s.tag("commons", "q", "beta", &v1).unwrap();

        // `latest` stays; unknown tags and versions are 404s.
        let e = s.delete_tag("commons", "q", LATEST).unwrap_err();
        assert_eq!(
            e.kind,
            tarn_common::ErrorKind::InvalidInput,
            "{}",
            e.message
        );
        let e = s.delete_tag("commons", "q", "nope").unwrap_err();
        assert_eq!(e.kind, tarn_common::ErrorKind::NotFound, "{}", e.message);
        let e = s.delete_version("commons", "q", "nope").unwrap_err();
        assert_eq!(e.kind, tarn_common::ErrorKind::NotFound, "{}", e.message);
        let e = s.delete_tag("commons", "nope", "prod").unwrap_err();
        assert_eq!(e.kind, tarn_common::ErrorKind::NotFound, "{}", e.message);

        // A tagged version is refused, naming its tags.
        let e = s.delete_version("commons", "q", &v1).unwrap_err();
        assert_eq!(e.kind, tarn_common::ErrorKind::InvalidInput);
        assert!(
            e.message.contains("'beta', 'prod'"),
            "the error names the tags: {}",
            e.message
        );

        // Deleting a tag returns the lambda as it was and is durable.
        let before = s.delete_tag("commons", "q", "beta").unwrap();
        assert_eq!(
            before.tag_json("beta").unwrap()["version"]["version"],
            json!(v1)
        );
        let s = LambdaStore::open(dir.path()).unwrap();
        assert!(s.get("commons", "q").unwrap().tagged("beta").is_err());

        // The newest version goes: `latest` moves back to the one before it.
        s.delete_version("commons", "q", &v3).unwrap();
        let s = LambdaStore::open(dir.path()).unwrap();
        let l = s.get("commons", "q").unwrap();
        assert_eq!(l.versions.len(), 2);
        assert!(l.version(&v3).is_err());
        assert_eq!(l.tagged(LATEST).unwrap().version, v2);

        // Once its tag is gone, the old version can go; the only version cannot.
        s.delete_tag("commons", "q", "prod").unwrap();
        s.delete_version("commons", "q", &v1).unwrap();
        let e = s.delete_version("commons", "q", &v2).unwrap_err();
        assert!(e.message.contains("only version"), "{}", e.message);
        let l = LambdaStore::open(dir.path())
            .unwrap()
            .get("commons", "q")
            .unwrap();
        assert_eq!(l.versions.len(), 1);
        assert_eq!(
            l.tags.keys().collect::<Vec<_>>(),
            [LATEST],
            "only latest is left"
        );
    }
}
