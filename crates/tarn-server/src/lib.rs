//! tarn's HTTP server: the Rockset v1 REST API over the storage engine, the query engine and
//! the stream sources.

pub mod auth;
pub mod dashboards;
pub mod error;
pub mod lambdas;
pub mod patch;
pub mod pg;
pub mod routes;
pub mod ui;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tarn_common::TarnResult;
use tarn_ingest::pipeline::{IngestTransform, TransformFactory};
use tarn_ingest::{IntegrationStore, SourceManager};
use tarn_sql::QueryEngine;
use tarn_sql::mapping::FieldMapping;
use tarn_storage::Storage;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub storage: Arc<Storage>,
    pub engine: Arc<QueryEngine>,
    pub sources: Arc<SourceManager>,
    pub dashboards: Arc<dashboards::DashboardStore>,
    pub live: Arc<dashboards::LiveHub>,
    pub keys: Arc<auth::ApiKeys>,
    pub lambdas: Arc<lambdas::LambdaStore>,
    /// True when requests without a key are served: loopback listener and no key exists.
    pub open_without_keys: bool,
}

/// A `field_mapping_query` as the ingest layer runs it.
struct SqlTransform(Arc<FieldMapping>);

impl IngestTransform for SqlTransform {
    fn apply(
        &self,
        docs: Vec<Map<String, Value>>,
    ) -> BoxFuture<'_, TarnResult<(Vec<Map<String, Value>>, Vec<String>)>> {
        Box::pin(self.0.apply(docs))
    }
}

impl AppState {
    /// Opens the integrations of the storage's data dir; sources start with
    /// [`AppState::start_sources`].
    pub fn new(storage: Arc<Storage>) -> TarnResult<AppState> {
        let engine = Arc::new(QueryEngine::new(storage.clone()));
        let integrations = Arc::new(IntegrationStore::open(storage.dir())?);
        let transforms: TransformFactory = Arc::new(|sql, event_time_info| {
            let mapping = tarn_sql::mapping::compile_shared(sql, event_time_info)?;
            Ok(Arc::new(SqlTransform(mapping)) as Arc<dyn IngestTransform>)
        });
        let sources = SourceManager::new(storage.clone(), integrations, Some(transforms));
        let dashboards = Arc::new(dashboards::DashboardStore::open(storage.dir())?);
        let live = dashboards::LiveHub::new(engine.clone(), storage.clone());
        let keys = Arc::new(auth::ApiKeys::open(storage.dir())?);
        let lambdas = Arc::new(lambdas::LambdaStore::open(storage.dir())?);
        Ok(AppState {
            storage,
            engine,
            sources,
            dashboards,
            live,
            keys,
            lambdas,
            open_without_keys: true,
        })
    }

    /// Starts the sources of every collection; call inside the runtime.
    pub fn start_sources(&self) {
        self.sources.start_all();
    }
}

/// Serves the API on `listener` until `shutdown` completes, then stops the sources.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sources = state.sources.clone();
    let r = axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sources.stop_all();
    r
}

/// The accept queue of tarn's listeners. tokio's `TcpListener::bind` takes the standard
/// library's 128, which a dashboard opened by 100 viewers at once (each with its page, its
/// scripts and four event streams) overflows: the kernel drops the SYNs and the clients
/// retry after a second. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`].
pub fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
