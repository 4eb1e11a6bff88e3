//! tarn's HTTP server: the Rockset v1 REST API over the storage engine and the query engine.

pub mod error;
pub mod routes;

use std::sync::Arc;

use tarn_sql::QueryEngine;
use tarn_storage::Storage;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub storage: Arc<Storage>,
    pub engine: Arc<QueryEngine>,
}

impl AppState {
    pub fn new(storage: Arc<Storage>) -> AppState {
        let engine = Arc::new(QueryEngine::new(storage.clone()));
        AppState { storage, engine }
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
