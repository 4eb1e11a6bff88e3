//! The catalog: workspaces and collections, persisted in `catalog.json` in the data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tarn_common::names::validate_name;
use tarn_common::{TarnError, TarnResult};

use crate::collection::{Collection, CollectionOptions, SealPolicy, write_atomic};

/// The workspace that always exists.
pub const DEFAULT_WORKSPACE: &str = "commons";

/// A workspace as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub created_by: String,
}

/// A collection as stored in the catalog: its definition, not its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub workspace: String,
    pub name: String,
    /// Names the collection's directory; a collection dropped and created again gets a new one.
    pub uuid: String,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(default)]
    pub options: CollectionOptions,
    /// The rest of the create request (sources, field mappings...) kept for later layers.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    workspaces: BTreeMap<String, WorkspaceInfo>,
    collections: Vec<CollectionInfo>,
}

/// A collection's definition and its open handle.
type CollectionEntry = (CollectionInfo, Arc<Collection>);

/// All workspaces and collections of a data directory.
pub struct Storage {
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    policy: SealPolicy,
    workspaces: RwLock<BTreeMap<String, WorkspaceInfo>>,
    collections: RwLock<BTreeMap<(String, String), CollectionEntry>>,
    /// Serialises catalog changes so the file always matches memory.
    change: Mutex<()>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("dir", &self.dir).finish()
    }
}

fn now_string() -> String {
    tarn_common::time::format_micros(tarn_common::time::now_micros())
}

impl Storage {
    /// Opens a data directory, creating it if needed, and replays every collection's log.
    pub fn open(dir: &Path, policy: SealPolicy) -> TarnResult<Arc<Storage>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            TarnError::internal(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize()?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                TarnError::internal(format!(
                    "cannot open object store at {}: {e}",
                    dir.display()
                ))
            })?,
        );
        let file: CatalogFile = match std::fs::read(dir.join("catalog.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| TarnError::internal(format!("catalog.json is corrupt: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile::default(),
            Err(e) => return Err(e.into()),
        };
        let storage = Storage {
            dir: dir.clone(),
            store,
            policy,
            workspaces: RwLock::new(file.workspaces),
            collections: RwLock::new(BTreeMap::new()),
            change: Mutex::new(()),
        };
        storage
            .workspaces
            .write()
            .entry(DEFAULT_WORKSPACE.to_owned())
            .or_insert_with(|| WorkspaceInfo {
                name: DEFAULT_WORKSPACE.into(),
                description: "The default workspace".into(),
                created_at: now_string(),
                created_by: "tarn".into(),
            });
        for info in file.collections {
            let c = storage.open_collection(&info)?;
            storage
                .collections
                .write()
                .insert((info.workspace.clone(), info.name.clone()), (info, c));
        }
        Ok(Arc::new(storage))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_collection(&self, info: &CollectionInfo) -> TarnResult<Arc<Collection>> {
        let rel = format!("collections/{}", info.uuid);
        Collection::open(
            self.dir.join(&rel),
            self.store.clone(),
            ObjectPath::from(rel),
            info.options.clone(),
            self.policy,
        )
    }

    fn save(&self) -> TarnResult<()> {
        let file = CatalogFile {
            workspaces: self.workspaces.read().clone(),
            collections: self
                .collections
                .read()
                .values()
                .map(|(i, _)| i.clone())
                .collect(),
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| TarnError::internal(e.to_string()))?;
        write_atomic(&self.dir.join("catalog.json"), &bytes)
    }

    pub fn list_workspaces(&self) -> Vec<WorkspaceInfo> {
        self.workspaces.read().values().cloned().collect()
    }

    pub fn get_workspace(&self, name: &str) -> TarnResult<WorkspaceInfo> {
        self.workspaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| TarnError::not_found(format!("workspace '{name}' does not exist")))
    }

    pub fn create_workspace(&self, name: &str, description: &str) -> TarnResult<WorkspaceInfo> {
        validate_name("workspace", name)?;
        let _g = self.change.lock();
        if self.workspaces.read().contains_key(name) {
            return Err(TarnError::already_exists(format!(
                "workspace '{name}' already exists"
            )));
        }
        let info = WorkspaceInfo {
            name: name.into(),
            description: description.into(),
            created_at: now_string(),
            created_by: "tarn".into(),
        };
        self.workspaces.write().insert(name.into(), info.clone());
        if let Err(e) = self.save() {
            self.workspaces.write().remove(name);
            return Err(e);
        }
        Ok(info)
    }

    pub fn delete_workspace(&self, name: &str) -> TarnResult<WorkspaceInfo> {
        let _g = self.change.lock();
        let info = self.get_workspace(name)?;
        if name == DEFAULT_WORKSPACE {
            return Err(TarnError::invalid(
                "the workspace 'commons' cannot be deleted",
            ));
        }
        let n = self.collection_count(name);
        if n > 0 {
            return Err(TarnError::invalid(format!(
                "workspace '{name}' still has {n} collection(s): delete them first"
            )));
        }
        self.workspaces.write().remove(name);
        self.save()?;
        Ok(info)
    }

    pub fn collection_count(&self, workspace: &str) -> usize {
        self.collections
            .read()
            .keys()
            .filter(|(w, _)| w == workspace)
            .count()
    }

    /// Creates a collection. `extra` keeps the rest of the request for the layers that use it.
    pub fn create_collection(
        &self,
        workspace: &str,
        name: &str,
        description: &str,
        options: CollectionOptions,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> TarnResult<(CollectionInfo, Arc<Collection>)> {
        validate_name("collection", name)?;
        if let Some(info) = &options.event_time_info {
            info.validate().map_err(TarnError::invalid)?;
        }
        let _g = self.change.lock();
        self.get_workspace(workspace)?;
        let key = (workspace.to_owned(), name.to_owned());
        if self.collections.read().contains_key(&key) {
            return Err(TarnError::already_exists(format!(
                "collection '{name}' already exists in workspace '{workspace}'"
            )));
        }
        let info = CollectionInfo {
            workspace: workspace.into(),
            name: name.into(),
            uuid: uuid::Uuid::new_v4().to_string(),
            description: description.into(),
            created_at: now_string(),
            created_by: "tarn".into(),
            options,
            extra,
        };
        let c = self.open_collection(&info)?;
        self.collections
            .write()
            .insert(key.clone(), (info.clone(), c.clone()));
        if let Err(e) = self.save() {
            self.collections.write().remove(&key);
            return Err(e);
        }
        Ok((info, c))
    }

    pub fn get_collection(
        &self,
        workspace: &str,
        name: &str,
    ) -> TarnResult<(CollectionInfo, Arc<Collection>)> {
        if let Some(entry) = self
            .collections
            .read()
            .get(&(workspace.to_owned(), name.to_owned()))
        {
            return Ok(entry.clone());
        }
        self.get_workspace(workspace)?;
        Err(TarnError::not_found(format!(
            "collection '{name}' does not exist in workspace '{workspace}'"
        )))
    }

    /// Collections, of one workspace or of all.
    pub fn list_collections(
        &self,
        workspace: Option<&str>,
    ) -> Vec<(CollectionInfo, Arc<Collection>)> {
        self.collections
            .read()
            .iter()
            .filter(|((w, _), _)| workspace.is_none_or(|ws| ws == w))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Deletes a collection and its data.
    pub fn delete_collection(&self, workspace: &str, name: &str) -> TarnResult<CollectionInfo> {
        let _g = self.change.lock();
        let key = (workspace.to_owned(), name.to_owned());
        let Some((info, c)) = self.collections.write().remove(&key) else {
            self.get_workspace(workspace)?;
            return Err(TarnError::not_found(format!(
                "collection '{name}' does not exist in workspace '{workspace}'"
            )));
        };
        self.save()?;
        c.close();
        let dir = c.dir().to_path_buf();
        drop(c);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted collection's files");
        }
        Ok(info)
    }

    /// Stops every collection's threads (used on shutdown).
    pub fn close(&self) {
        for (_, c) in self.collections.read().values() {
            c.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_common::ErrorKind;

    #[test]
    fn workspaces_and_collections_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), SealPolicy::default()).unwrap();
        assert!(s.get_workspace("commons").is_ok());
        s.create_workspace("ws1", "d").unwrap();
        assert_eq!(
            s.create_workspace("ws1", "").unwrap_err().kind,
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            s.create_workspace("bad name", "").unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        s.create_collection(
            "ws1",
            "c-1",
            "",
            CollectionOptions::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            s.create_collection(
                "ws1",
                "c-1",
                "",
                CollectionOptions::default(),
                Default::default()
            )
            .unwrap_err()
            .kind,
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            s.get_collection("nows", "x").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            s.delete_workspace("ws1").unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        s.close();
        drop(s);
        let s = Storage::open(dir.path(), SealPolicy::default()).unwrap();
        assert_eq!(s.list_collections(Some("ws1")).len(), 1);
        s.delete_collection("ws1", "c-1").unwrap();
        s.delete_workspace("ws1").unwrap();
        assert_eq!(
            s.get_workspace("ws1").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
}
