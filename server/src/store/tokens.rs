//! Operator and device tokens, stored only as SHA-256 hashes.

use sled::Transactional;

use super::*;

impl Store {
    /// Who the token with this hash speaks for, if it is live.
    pub fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        get(&self.tokens, token_hash)
    }

    /// Mint a named operator token; 409 when the name is taken.
    pub fn create_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        self.set_operator_token(name, hash, now, false)
    }

    /// Make `hash` the token named `name`, replacing any earlier one of that name (used
    /// for `--admin-token`, which must win over what is stored).
    pub fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        self.set_operator_token(name, hash, now, true)
    }

    fn set_operator_token(&self, name: &str, hash: &str, now: Ts, replace: bool) -> Result<()> {
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
            .map_err(tx_err)
    }

    pub fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        self.operator_tokens
            .iter()
            .values()
            .map(|v| dec(&v?))
            .collect()
    }

    pub fn operator_token_exists(&self, name: &str) -> Result<bool> {
        Ok(self.operator_tokens.contains_key(name)?)
    }

    pub fn has_operator_tokens(&self) -> bool {
        !self.operator_tokens.is_empty()
    }

    pub fn delete_operator_token(&self, name: &str) -> Result<()> {
        (&self.operator_tokens, &self.tokens)
            .transaction(|(names, tokens)| {
                let Some(old) = tx_get::<OperatorTokenRecord>(names, name)? else {
                    return abort(StoreError::NotFound(format!("no token named {name:?}")));
                };
                names.remove(name)?;
                tokens.remove(old.hash.as_bytes())?;
                Ok(())
            })
            .map_err(tx_err)
    }
}
