//! The REST routes: health, workspaces, collections, documents, integrations and queries, in
//! Rockset's shapes.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Router, response::IntoResponse};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tarn_common::limits::MAX_REQUEST_BYTES;
use tarn_common::{TarnError, TarnResult};
use tarn_sql::QueryRequest;
use tarn_storage::collection::DocStatus;
use tarn_storage::document::{IngestContext, parse_limited, prepare, prepare_text};
use tarn_storage::jsonscan::split_data_array;
use tarn_storage::{Collection, CollectionInfo, CollectionOptions, EventTimeInfo, WorkspaceInfo};

use crate::AppState;
use crate::error::ApiResult;

/// All routes.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/ws", post(create_workspace).get(list_workspaces))
        .route("/ws/{ws}", get(get_workspace).delete(delete_workspace))
        .route(
            "/ws/{ws}/collections",
            post(create_collection).get(list_workspace_collections),
        )
        .route("/collections", get(list_all_collections))
        .route(
            "/ws/{ws}/collections/{c}",
            get(get_collection).delete(delete_collection),
        )
        .route(
            "/ws/{ws}/collections/{c}/docs",
            post(add_documents)
                .delete(delete_documents)
                .patch(crate::patch::patch_documents),
        )
        .route(
            "/users/{user}/apikeys",
            post(crate::auth::create_key).get(crate::auth::list_keys),
        )
        .route(
            "/users/{user}/apikeys/{name}",
            get(crate::auth::get_key).delete(crate::auth::revoke_key),
        )
        .route("/lambdas", get(crate::lambdas::list_all))
        .route(
            "/ws/{ws}/lambdas",
            post(crate::lambdas::create).get(crate::lambdas::list_workspace),
        )
        .route(
            "/ws/{ws}/lambdas/{name}",
            get(crate::lambdas::get_lambda).delete(crate::lambdas::delete_lambda),
        )
        .route(
            "/ws/{ws}/lambdas/{name}/versions",
            post(crate::lambdas::add_version).get(crate::lambdas::list_versions),
        )
        .route(
            "/ws/{ws}/lambdas/{name}/versions/{version}",
            get(crate::lambdas::get_version)
                .post(crate::lambdas::execute_version)
                .delete(crate::lambdas::delete_version),
        )
        // Rockset's clients delete a version at `.../version/{version}` (singular).
        .route(
            "/ws/{ws}/lambdas/{name}/version/{version}",
            axum::routing::delete(crate::lambdas::delete_version),
        )
        .route(
            "/ws/{ws}/lambdas/{name}/tags",
            post(crate::lambdas::create_tag).get(crate::lambdas::list_tags),
        )
        .route(
            "/ws/{ws}/lambdas/{name}/tags/{tag}",
            get(crate::lambdas::get_tag)
                .post(crate::lambdas::execute_tag)
                .delete(crate::lambdas::delete_tag),
        )
        .route(
            "/ws/{ws}/collections/{c}/ingest-errors",
            get(list_ingest_errors),
        )
        .route(
            "/integrations",
            post(create_integration).get(list_integrations),
        )
        .route(
            "/integrations/{name}",
            get(get_integration).delete(delete_integration),
        )
        .route("/ws/{ws}/collections/{c}/schema", get(collection_schema))
        .route("/dashboards", post(create_dashboard).get(list_dashboards))
        .route(
            "/dashboards/{name}",
            get(get_dashboard)
                .put(update_dashboard)
                .delete(delete_dashboard),
        )
        .route("/dashboards/{name}/live", get(dashboard_live))
        .route("/dashboards/{name}/panels/{panel}/live", get(panel_live))
        .route("/live/stats", get(live_stats))
        .route("/queries", post(run_query))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    // Browser clients on other origins (the original dashboard's page) may call the API.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any)
        .max_age(std::time::Duration::from_secs(3600));
    Router::new()
        .route("/", get(crate::ui::root))
        .route("/ui", get(crate::ui::root))
        .route("/ui/", get(crate::ui::index))
        .route("/ui/{*path}", get(crate::ui::file))
        .route("/health", get(health))
        .nest("/v1/orgs/self", v1)
        .layer(cors)
        .with_state(state)
}

/// Every API route needs a valid key, unless the server runs open (loopback, no keys).
async fn require_key(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match crate::auth::check(
        &st.keys,
        st.open_without_keys,
        req.headers(),
        req.uri().query(),
    ) {
        Ok(()) => next.run(req).await,
        Err(e) => crate::error::ApiError(e).into_response(),
    }
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Reads a body up to the documented limit; larger bodies get 413.
pub(crate) async fn read_body(body: Body) -> TarnResult<Bytes> {
    // A declared length over the limit is refused before reading a byte of it.
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    if declared > MAX_REQUEST_BYTES as u64 {
        return Err(TarnError::too_large(format!(
            "the request body is {declared} bytes, over the limit of {MAX_REQUEST_BYTES}: send the documents in smaller batches"
        )));
    }
    axum::body::to_bytes(body, MAX_REQUEST_BYTES).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            TarnError::too_large(format!(
                "the request body exceeds {MAX_REQUEST_BYTES} bytes: send the documents in smaller batches"
            ))
        } else {
            TarnError::invalid(format!("cannot read the request body: {e}"))
        }
    })
}

/// Parses a JSON body into `T`; an empty body is `{}`. Errors say where the JSON is wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> TarnResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the request body is not valid JSON"
        } else {
            "the request body is invalid"
        };
        TarnError::invalid(format!("{what}: {e}")).at(e.line() as u64, e.column() as u64)
    })
}

fn workspace_json(storage: &tarn_storage::Storage, w: &WorkspaceInfo) -> Value {
    json!({
        "name": w.name,
        "description": w.description,
        "created_at": w.created_at,
        "created_by": w.created_by,
        "collection_count": storage.collection_count(&w.name),
    })
}

#[derive(Deserialize)]
struct CreateWorkspace {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn create_workspace(State(st): State<AppState>, body: Body) -> ApiResult<impl IntoResponse> {
    let req: CreateWorkspace = parse_json(&read_body(body).await?)?;
    let w = st
        .storage
        .create_workspace(&req.name, req.description.as_deref().unwrap_or(""))?;
    Ok(Json(json!({"data": workspace_json(&st.storage, &w)})))
}

async fn list_workspaces(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let data: Vec<Value> = st
        .storage
        .list_workspaces()
        .iter()
        .map(|w| workspace_json(&st.storage, w))
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn get_workspace(
    State(st): State<AppState>,
    Path(ws): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let w = st.storage.get_workspace(&ws)?;
    Ok(Json(json!({"data": workspace_json(&st.storage, &w)})))
}

async fn delete_workspace(
    State(st): State<AppState>,
    Path(ws): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let w = st.storage.delete_workspace(&ws)?;
    Ok(Json(json!({"data": workspace_json(&st.storage, &w)})))
}

/// The collection as Rockset returns it, with its sources' live status.
pub fn collection_json(
    st: &AppState,
    info: &CollectionInfo,
    c: &Collection,
    status: &str,
) -> Value {
    let stats = c.stats();
    let errors = st.sources.error_log(info, c);
    let mut out = json!({
        "name": info.name,
        "workspace": info.workspace,
        "description": info.description,
        "created_at": info.created_at,
        "created_by": info.created_by,
        "status": status,
        "sources": st.sources.sources_json(info),
        "stats": {
            "doc_count": stats.doc_count,
            "total_size": stats.total_size,
            "last_updated_ms": stats.last_updated_ms,
            "segment_count": stats.segments,
            "ingest_error_count": errors.count(),
        },
        "field_mappings": info.extra.get("field_mappings").cloned().unwrap_or(json!([])),
        "clustering_key": info.extra.get("clustering_key").cloned().unwrap_or(json!([])),
    });
    if let Some(r) = info.options.retention_secs {
        out["retention_secs"] = json!(r);
    }
    if let Some(e) = &info.options.event_time_info {
        out["event_time_info"] = json!(e);
    }
    if let Some(q) = info.extra.get("field_mapping_query") {
        out["field_mapping_query"] = q.clone();
    }
    out
}

#[derive(Deserialize)]
struct CreateCollection {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    retention_secs: Option<u64>,
    #[serde(default)]
    event_time_info: Option<EventTimeInfo>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

async fn create_collection(
    State(st): State<AppState>,
    Path(ws): Path<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let req: CreateCollection = parse_json(&read_body(body).await?)?;
    if req.retention_secs == Some(0) {
        return Err(TarnError::invalid(
            "retention_secs must be at least 1, or omitted to keep documents forever",
        )
        .into());
    }
    let options = CollectionOptions {
        event_time_info: req.event_time_info,
        retention_secs: req.retention_secs,
    };
    let mut extra = req.extra;
    extra.retain(|_, v| !v.is_null());
    tarn_ingest::manager::normalize_sources(&mut extra);
    // Sources and the field mapping are checked before anything is created.
    st.sources.validate(&extra)?;
    let (info, c) = st.storage.create_collection(
        &ws,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        options,
        extra,
    )?;
    if let Err(e) = st.sources.start(&info, &c) {
        tracing::error!(collection = %info.name, error = %e.message, "cannot start the collection's sources");
    }
    Ok(Json(
        json!({"data": collection_json(&st, &info, &c, "CREATED")}),
    ))
}

async fn list_workspace_collections(
    State(st): State<AppState>,
    Path(ws): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.storage.get_workspace(&ws)?;
    let data: Vec<Value> = st
        .storage
        .list_collections(Some(&ws))
        .iter()
        .map(|(i, c)| collection_json(&st, i, c, "READY"))
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn list_all_collections(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let data: Vec<Value> = st
        .storage
        .list_collections(None)
        .iter()
        .map(|(i, c)| collection_json(&st, i, c, "READY"))
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn get_collection(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    Ok(Json(
        json!({"data": collection_json(&st, &info, &c, "READY")}),
    ))
}

async fn delete_collection(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    let body = collection_json(&st, &info, &c, "DELETED");
    st.sources.stop(&info.uuid);
    drop(c);
    let storage = st.storage.clone();
    tokio::task::spawn_blocking(move || storage.delete_collection(&ws, &name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": body})))
}

fn status_json(collection: &str, id: Option<&str>, status: &DocStatus) -> Value {
    let mut v = json!({"_collection": collection, "status": status.as_str()});
    if let Some(id) = id {
        v["_id"] = json!(id);
    }
    if let DocStatus::Error(msg) = status {
        v["error"] = json!({"message": msg, "type": "INVALIDINPUT"});
    }
    v
}

async fn add_documents(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    let body = read_body(body).await?;
    let spans =
        split_data_array(&body).map_err(|e| e.into_tarn_error(&body, "the request body"))?;
    let meta = json!({"source": "api"});
    let now = tarn_common::time::now_micros();
    let ctx = IngestContext {
        event_time_info: info.options.event_time_info.as_ref(),
        now_micros: now,
        meta: &meta,
    };
    // Each element either becomes a document or gets its own error; the others go on.
    let mut outcome: Vec<Result<String, String>> = Vec::with_capacity(spans.len());
    let mut docs = Vec::with_capacity(spans.len());
    if let Some(transform) = st.sources.transform(&info)? {
        // With a field_mapping_query the stored documents are the mapping's output: the
        // statuses are those of the documents stored, then of the elements refused.
        let mut objects = Vec::with_capacity(spans.len());
        for span in &spans {
            match parse_limited(&body[span.start..span.end], span.depth) {
                Ok(Value::Object(m)) => objects.push(m),
                Ok(other) => outcome.push(Err(format!(
                    "a document must be a JSON object, not {}",
                    tarn_storage::document::json_kind(&other)
                ))),
                Err(msg) => outcome.push(Err(msg)),
            }
        }
        let (mapped, rejected) = transform.apply(objects).await?;
        outcome.extend(rejected.into_iter().map(Err));
        for m in mapped {
            let v = Value::Object(m);
            let text = serde_json::to_vec(&v).expect("JSON values serialize");
            match prepare(v, &ctx) {
                Ok(doc) => {
                    outcome.insert(docs.len(), Ok(doc.id.clone()));
                    docs.push((doc, text));
                }
                Err(msg) => outcome.push(Err(msg)),
            }
        }
    } else {
        let _preparing = tarn_storage::build::Preparing::start();
        for span in &spans {
            let text = &body[span.start..span.end];
            let prepared = prepare_text(text, &ctx)
                .unwrap_or_else(|| parse_limited(text, span.depth).and_then(|v| prepare(v, &ctx)));
            match prepared {
                Ok(doc) => {
                    outcome.push(Ok(doc.id.clone()));
                    docs.push((doc, text.to_vec()));
                }
                Err(msg) => outcome.push(Err(msg)),
            }
        }
    }
    let stored = if docs.is_empty() {
        Vec::new()
    } else {
        let _shared = crate::patch::api_write_guard(&c).await;
        c.insert(docs, Vec::new()).await?
    };
    let mut stored = stored.into_iter();
    let data: Vec<Value> = outcome
        .iter()
        .map(|o| match o {
            Ok(id) => status_json(
                &info.name,
                Some(id),
                &stored.next().unwrap_or(DocStatus::Added),
            ),
            Err(msg) => status_json(&info.name, None, &DocStatus::Error(msg.clone())),
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn collection_schema(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (_, c) = st.storage.get_collection(&ws, &name)?;
    // Sealed segments' columns are decoded from their files: off the serving workers.
    let snapshot = c.snapshot();
    let fields =
        tokio::task::spawn_blocking(move || tarn_storage::summary::field_summary(&snapshot))
            .await
            .map_err(|e| TarnError::internal(format!("the schema summary failed: {e}")))??;
    Ok(Json(json!({"data": fields})))
}

/// A dashboard body in the format its `Content-Type` names (JSON or YAML).
async fn read_dashboard(
    headers: &axum::http::HeaderMap,
    body: Body,
) -> TarnResult<crate::dashboards::Dashboard> {
    let format = crate::dashboards::Format::from_content_type(
        headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    crate::dashboards::Dashboard::parse_as(&read_body(body).await?, format)
}

async fn create_dashboard(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let d = read_dashboard(&headers, body).await?;
    let store = st.dashboards.clone();
    let d = tokio::task::spawn_blocking(move || store.put(d, false))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": d})))
}

async fn update_dashboard(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let d = read_dashboard(&headers, body).await?;
    if d.name != name {
        return Err(TarnError::invalid(format!(
            "the dashboard is named '{}' but the path names '{name}'",
            d.name
        ))
        .into());
    }
    st.dashboards.get(&name)?;
    let store = st.dashboards.clone();
    let d = tokio::task::spawn_blocking(move || store.put(d, true))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": d})))
}

async fn list_dashboards(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({"data": st.dashboards.list()})))
}

/// `GET /dashboards/{name}`: `{"data": dashboard}`, or with `Accept: application/yaml` the
/// dashboard document itself in YAML (what `PUT` and `--dashboard FILE.yaml` read).
async fn get_dashboard(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    use crate::dashboards::Format;
    let d = st.dashboards.get(&name)?;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Ok(match Format::from_accept(accept) {
        Format::Yaml => (
            [(
                axum::http::header::CONTENT_TYPE,
                Format::Yaml.content_type(),
            )],
            d.to_yaml()?,
        )
            .into_response(),
        Format::Json => Json(json!({"data": d})).into_response(),
    })
}

async fn delete_dashboard(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let store = st.dashboards.clone();
    let d = tokio::task::spawn_blocking(move || store.delete(&name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": d})))
}

/// The view's parameter values: those given in the query string, the defaults for the rest.
fn view_params(
    d: &crate::dashboards::Dashboard,
    query: &std::collections::HashMap<String, String>,
) -> Vec<(String, String)> {
    d.params
        .iter()
        .map(|pa| {
            let value = query.get(&pa.name).unwrap_or(&pa.default);
            (pa.name.clone(), value.clone())
        })
        .collect()
}

/// A feed's results as events: the latest at once (when there is one), then each new one.
fn feed_events(
    rx: tokio::sync::watch::Receiver<Option<std::sync::Arc<String>>>,
) -> impl futures::Stream<Item = std::sync::Arc<String>> + Send + 'static {
    futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        loop {
            let latest = rx.borrow_and_update().clone();
            if let Some(text) = latest {
                return Some((text, (rx, false)));
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// Server-sent events for a whole view, on one connection: first a `dashboard` event (the
/// document and the parameter values in force), then a `panel` event for each result of
/// each panel (its `panel` field names it). A browser keeps at most six HTTP/1.1
/// connections per server, so one stream per view instead of one per panel lets several
/// tabs watch at once; and the page needs no request before it. Viewers share the panels'
/// feeds as with [`panel_live`].
async fn dashboard_live(
    State(st): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let d = st.dashboards.get(&name)?;
    let params = view_params(&d, &query);
    let head = json!({
        "dashboard": d,
        "params": params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    });
    let head = Event::default().event("dashboard").data(head.to_string());
    let panels = d.panels.iter().map(|p| {
        feed_events(st.live.subscribe(&d, p, params.clone()))
            .map(|text| Event::default().event("panel").data(text.as_str()))
            .boxed()
    });
    let stream = futures::stream::once(async move { head })
        .chain(futures::stream::select_all(panels))
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Server-sent events of one panel: its latest result now, then each new one. Viewers of
/// the same panel and parameters share one feed (see `LiveHub`).
async fn panel_live(
    State(st): State<AppState>,
    Path((name, panel)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let d = st.dashboards.get(&name)?;
    let p = d.panel(&panel)?.clone();
    let rx = st.live.subscribe(&d, &p, view_params(&d, &query));
    let stream = feed_events(rx)
        .map(|text| Ok::<_, std::convert::Infallible>(Event::default().data(text.as_str())));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn live_stats(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.live.stats()))
}

async fn list_ingest_errors(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    let log = st.sources.error_log(&info, &c);
    let data: Vec<Value> = log.recent().iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({"data": data, "count": log.count()})))
}

async fn create_integration(
    State(st): State<AppState>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let req: Map<String, Value> = parse_json(&read_body(body).await?)?;
    let store = st.sources.integrations().clone();
    let i = tokio::task::spawn_blocking(move || store.create(req))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    tracing::info!(integration = %i.name, kind = i.kind(), "integration created");
    Ok(Json(json!({"data": i.public_json()})))
}

async fn list_integrations(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let data: Vec<Value> = st
        .sources
        .integrations()
        .list()
        .iter()
        .map(|i| i.public_json())
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn get_integration(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let i = st.sources.integrations().get(&name)?;
    Ok(Json(json!({"data": i.public_json()})))
}

async fn delete_integration(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    st.sources.integrations().get(&name)?;
    // Rockset refuses to delete an integration a collection reads through.
    let users: Vec<String> = st
        .storage
        .list_collections(None)
        .iter()
        .filter(|(info, _)| {
            info.extra
                .get("sources")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|s| s["integration_name"] == name.as_str()))
        })
        .map(|(info, _)| format!("{}.{}", info.workspace, info.name))
        .collect();
    if !users.is_empty() {
        return Err(TarnError::invalid(format!(
            "integration '{name}' is used by {}: drop those collections first",
            users.join(", ")
        ))
        .into());
    }
    let store = st.sources.integrations().clone();
    let i = tokio::task::spawn_blocking(move || store.delete(&name))
        .await
        .map_err(|e| TarnError::internal(e.to_string()))??;
    Ok(Json(json!({"data": i.public_json()})))
}

async fn delete_documents(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    #[derive(Deserialize)]
    struct Req {
        data: Vec<Value>,
    }
    let req: Req = parse_json(&read_body(body).await?)?;
    let mut ids = Vec::with_capacity(req.data.len());
    let mut outcome: Vec<Result<String, String>> = Vec::with_capacity(req.data.len());
    for item in &req.data {
        match item.get("_id").and_then(Value::as_str) {
            Some(id) => {
                ids.push(id.to_owned());
                outcome.push(Ok(id.to_owned()));
            }
            None => outcome.push(Err(format!(
                "each element must be {{\"_id\": \"...\"}}, got {item}"
            ))),
        }
    }
    let done = if ids.is_empty() {
        Vec::new()
    } else {
        let _shared = crate::patch::api_write_guard(&c).await;
        c.delete(ids).await?
    };
    let mut done = done.into_iter();
    let data: Vec<Value> = outcome
        .iter()
        .map(|o| match o {
            Ok(id) => status_json(
                &info.name,
                Some(id),
                &done.next().unwrap_or(DocStatus::Deleted),
            ),
            Err(msg) => status_json(&info.name, None, &DocStatus::Error(msg.clone())),
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

#[derive(Deserialize)]
struct QueryBody {
    sql: SqlBody,
}

#[derive(Deserialize)]
struct SqlBody {
    query: String,
    #[serde(default)]
    default_row_limit: Option<usize>,
    #[serde(default)]
    parameters: Option<Vec<tarn_sql::QueryParameter>>,
}

async fn run_query(State(st): State<AppState>, body: Body) -> ApiResult<impl IntoResponse> {
    let req: QueryBody = parse_json(&read_body(body).await?)?;
    let q = QueryRequest {
        sql: req.sql.query,
        parameters: req.sql.parameters.unwrap_or_default(),
        default_row_limit: req.sql.default_row_limit,
    };
    Ok(Json(query_response(&st, &q).await?))
}

/// Runs a query and shapes Rockset's query response.
pub(crate) async fn query_response(st: &AppState, q: &QueryRequest) -> TarnResult<Value> {
    let out = st.engine.query(q).await?;
    let mut resp = json!({
        "query_id": out.query_id,
        "collections": out.collections,
        "results": out.results,
        "column_fields": out.column_fields,
        "stats": {"elapsed_time_ms": out.elapsed_ms},
        "results_total_doc_count": out.results.len(),
        "status": "COMPLETED",
    });
    if !out.warnings.is_empty() {
        resp["warnings"] = json!(out.warnings);
    }
    Ok(resp)
}
