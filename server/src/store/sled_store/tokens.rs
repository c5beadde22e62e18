//! Operator and device tokens, stored only as SHA-256 hashes.

use super::*;

impl SledStore {
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
            .map_err(tx_err)
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
            .map_err(tx_err)
    }
}
