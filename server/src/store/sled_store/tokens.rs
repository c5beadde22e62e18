//! Operator and device tokens, stored only as SHA-256 hashes, with a read cache: every
//! request looks its token up, so live tokens are kept in memory and the cache is
//! emptied whenever any token is revoked.

use std::collections::HashMap;
use std::sync::RwLock;

use super::*;

/// Most tokens cached (a full cache is emptied and refills with what is used).
const CACHE_MAX: usize = 100_000;

/// Live tokens seen recently. Only positive answers are cached; a revocation empties
/// it and bumps the generation, so a lookup that read the store before the revocation
/// cannot put the revoked token back.
#[derive(Debug, Default)]
pub struct TokenCache {
    inner: RwLock<(u64, HashMap<String, Principal>)>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> (u64, Option<Principal>) {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.get(hash).cloned())
    }

    fn insert(&self, generation: u64, hash: &str, principal: &Principal) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if guard.0 != generation {
            return;
        }
        if guard.1.len() >= CACHE_MAX {
            guard.1.clear();
        }
        guard.1.insert(hash.to_owned(), principal.clone());
    }

    /// Some token was revoked: forget every cached one.
    pub fn invalidate(&self) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        guard.1.clear();
    }
}

impl SledStore {
    /// Who the token with this hash speaks for, if it is live.
    pub(super) fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        let (generation, cached) = self.token_cache.get(token_hash);
        if cached.is_some() {
            return Ok(cached);
        }
        let found: Option<Principal> = get(&self.tokens, token_hash)?;
        if let Some(p) = &found {
            self.token_cache.insert(generation, token_hash, p);
        }
        Ok(found)
    }
    pub(super) fn set_operator_token(
        &self,
        name: &str,
        hash: &str,
        now: Ts,
        replace: bool,
    ) -> Result<()> {
        (&self.operator_tokens, &self.tokens)
            .transaction(|(names, tokens)| {
                if let Some(old) = tx_get::<OperatorTokenRecord>(names, name)? {
                    if !replace {
                        return abort(StoreError::Conflict(format!(
                            "a token named {name:?} exists"
                        )));
                    }
                    if old.hash == hash {
                        return Ok(());
                    }
                    tokens.remove(old.hash.as_bytes())?;
                }
                let rec = OperatorTokenRecord {
                    name: name.to_owned(),
                    hash: hash.to_owned(),
                    created_at: now,
                };
                tx_put(names, name, &rec)?;
                tx_put(
                    tokens,
                    hash,
                    &Principal::Operator {
                        name: name.to_owned(),
                    },
                )?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.token_cache.invalidate();
        Ok(())
    }

    pub(super) fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        self.operator_tokens
            .iter()
            .values()
            .map(|v| dec(&v?))
            .collect()
    }

    pub(super) fn delete_operator_token(&self, name: &str) -> Result<()> {
        (&self.operator_tokens, &self.tokens)
            .transaction(|(names, tokens)| {
                let Some(old) = tx_get::<OperatorTokenRecord>(names, name)? else {
                    return abort(StoreError::NotFound(format!("no token named {name:?}")));
                };
                names.remove(name)?;
                tokens.remove(old.hash.as_bytes())?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.token_cache.invalidate();
        Ok(())
    }
}
