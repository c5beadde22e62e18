//! Bundle records (the archives themselves are files, managed by the bundle routes).

use super::*;

impl SledStore {
    /// Record a new bundle; 409 when its version exists.
    pub(super) fn insert_bundle(&self, b: &BundleRecord) -> Result<()> {
        (&self.bundles, &self.bundle_versions)
            .transaction(|(bundles, versions)| {
                if versions.get(b.version.as_bytes())?.is_some() {
                    return abort(StoreError::Conflict(format!(
                        "bundle version {} already exists",
                        b.version
                    )));
                }
                versions.insert(b.version.as_bytes(), b.id.as_bytes())?;
                tx_put(bundles, &b.id, b)?;
                Ok(())
            })
            .map_err(tx_err)
    }

    pub(super) fn bundle(&self, id: &str) -> Result<BundleRecord> {
        get(&self.bundles, id)?.ok_or_else(|| StoreError::NotFound(format!("no bundle {id:?}")))
    }

    pub(super) fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>> {
        match self.bundle_versions.get(version)? {
            Some(id) => get(&self.bundles, id),
            None => Ok(None),
        }
    }

    /// Newest first (ids are time-ordered).
    pub(super) fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        self.bundles
            .iter()
            .values()
            .rev()
            .map(|v| dec(&v?))
            .collect()
    }

    /// Remove a bundle's record; 409 while an unfinished deployment uses it.
    pub(super) fn delete_bundle(&self, id: &str) -> Result<BundleRecord> {
        (
            &self.bundles,
            &self.bundle_versions,
            &self.bundle_open,
            &self.bundle_signatures,
        )
            .transaction(|(bundles, versions, open, sigs)| {
                let Some(b) = tx_get::<BundleRecord>(bundles, id)? else {
                    return abort(StoreError::NotFound(format!("no bundle {id:?}")));
                };
                if tx_get::<u64>(open, id)?.unwrap_or(0) > 0 {
                    return abort(StoreError::Conflict(format!(
                        "bundle {} is used by an unfinished deployment",
                        b.version
                    )));
                }
                bundles.remove(id.as_bytes())?;
                versions.remove(b.version.as_bytes())?;
                open.remove(id.as_bytes())?;
                sigs.remove(id.as_bytes())?;
                Ok(b)
            })
            .map_err(tx_err)
    }
}
