//! Workspaces as DataFusion schemas and collections as tables, looked up live in the storage.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::Result;
use tarn_storage::Storage;

use crate::table::CollectionTable;

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
                Arc::new(CollectionTable::new(
                    info.workspace,
                    info.name,
                    c.snapshot(),
                )) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.get_collection(&self.workspace, name).is_ok()
    }
}
