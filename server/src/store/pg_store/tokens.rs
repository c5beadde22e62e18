//! PostgreSQL: operator and device tokens.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        Err(not_built("principal"))
    }

    pub(super) async fn create_operator_token(
        &self,
        name: &str,
        hash: &str,
        now: Ts,
    ) -> Result<()> {
        Err(not_built("create_operator_token"))
    }

    pub(super) async fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        Err(not_built("put_operator_token"))
    }

    pub(super) async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        Err(not_built("list_operator_tokens"))
    }

    pub(super) async fn operator_token_exists(&self, name: &str) -> Result<bool> {
        Err(not_built("operator_token_exists"))
    }

    pub(super) async fn has_operator_tokens(&self) -> Result<bool> {
        Err(not_built("has_operator_tokens"))
    }

    pub(super) async fn delete_operator_token(&self, name: &str) -> Result<()> {
        Err(not_built("delete_operator_token"))
    }
}
