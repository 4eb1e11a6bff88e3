//! Workspaces as DataFusion schemas and collections as tables, looked up live in the storage.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::Result;
use tarn_storage::Storage;

use crate::table::CollectionTable;

tokio::task_local! {
    /// The top-level columns the statement being planned can name (see
    /// [`with_query_columns`]).
    static QUERY_COLUMNS: Arc<HashSet<String>>;
}

/// Runs `planning` with table lookups that give each collection only the top-level columns
/// in `columns`, in tables planned to be kept and run again
/// ([`CollectionTable::reusable`]). DataFusion's planning copies, hashes and compares
/// table schemas many times over; a tweet's has dozens of columns and hundreds of nested
/// fields, of which a query names a few, and the whole schema made up most of planning
/// the tutorial's queries.
///
/// Contract: `columns` holds every name the statement could resolve to a column (a
/// superset is fine); a statement with a wildcard or a natural join must be planned
/// without this, as those reach columns they do not name.
pub async fn with_query_columns<F: Future>(
    columns: Arc<HashSet<String>>,
    planning: F,
) -> F::Output {
    QUERY_COLUMNS.scope(columns, planning).await
}

/// The catalog: one schema per workspace. Lookups see collections created a moment ago.
#[derive(Debug)]
pub struct TarnCatalog {
    pub storage: Arc<Storage>,
}

impl CatalogProvider for TarnCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.storage
            .list_workspaces()
            .into_iter()
            .map(|w| w.name)
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == crate::pgcatalog::PG_CATALOG {
            return Some(Arc::new(crate::pgcatalog::PgCatalogSchema {
                storage: self.storage.clone(),
            }));
        }
        self.storage.get_workspace(name).ok().map(|_| {
            Arc::new(WorkspaceSchema {
                storage: self.storage.clone(),
                workspace: name.to_owned(),
            }) as _
        })
    }
}

/// One workspace; each table lookup takes a fresh snapshot of the collection.
#[derive(Debug)]
pub struct WorkspaceSchema {
    storage: Arc<Storage>,
    workspace: String,
}

#[async_trait]
impl SchemaProvider for WorkspaceSchema {
    fn table_names(&self) -> Vec<String> {
        self.storage
            .list_collections(Some(&self.workspace))
            .into_iter()
            .map(|(i, _)| i.name)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        // As in Postgres, pg_catalog is on the search path: `FROM pg_type` finds it when no
        // collection has that name.
        if name.starts_with("pg_") && !self.table_exist(name) {
            let pg = crate::pgcatalog::PgCatalogSchema {
                storage: self.storage.clone(),
            };
            return pg.table(name).await;
        }
        Ok(self
            .storage
            .get_collection(&self.workspace, name)
            .ok()
            .map(|(info, c)| {
                let mut snapshot = c.snapshot();
                let collection_schema = snapshot.schema.clone();
                let named = QUERY_COLUMNS.try_with(Arc::clone).ok();
                if let Some(columns) = &named {
                    let fields: Vec<_> = snapshot
                        .schema
                        .fields()
                        .iter()
                        .filter(|f| columns.contains(f.name()))
                        .cloned()
                        .collect();
                    snapshot.schema =
                        Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
                            fields,
                            snapshot.schema.metadata().clone(),
                        ));
                }
                let table = CollectionTable::new(info.workspace, info.name, snapshot);
                Arc::new(match named {
                    Some(_) => table.reusable(collection_schema),
                    None => table,
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.get_collection(&self.workspace, name).is_ok()
    }
}
