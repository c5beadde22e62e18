//! PostgreSQL: export and import as domain records (SPEC §2 backups).
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn export(&self, sink: Box<dyn RecordSink>) -> Result<()> {
        Err(not_built("export"))
    }

    pub(super) async fn import(&self, source: RecordSource) -> Result<RecordCounts> {
        Err(not_built("import"))
    }
}
