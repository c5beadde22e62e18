//! Ids as an operator types them (SPEC §4 "Ids"): the full id, or any unique suffix of at
//! least [`MIN_SUFFIX`] characters — what the tables show (`…588ee1695f5`).
//!
//! A suffix is resolved by listing, since the API looks ids up whole:
//! - a device suffix reads `GET /devices` in pages of 1000 (`after` cursor), keeping only
//!   the ids that match: ⌈devices / 1000⌉ requests, at most [`MAX_DEVICE_PAGES`];
//! - a deployment suffix reads the newest 1000 deployments once (`devices=false`, so the
//!   reply stays small); an older one needs its full id.
//!
//! An input as long as a minted id ([`FULL_ID_LEN`]) is used as it is, without a
//! request. Too short is a usage error (exit 2); no match or several is exit 1, naming
//! the matches.

use super::{OpError, OpResult, check_id};
use crate::api::{Api, DeviceQuery, MAX_PAGE};

/// Shortest suffix accepted.
pub(crate) const MIN_SUFFIX: usize = 6;
/// Length of the ids the server mints (a UUIDv7 in simple form).
pub(crate) const FULL_ID_LEN: usize = 32;
/// Device pages read for one resolution (1000 devices each).
pub(crate) const MAX_DEVICE_PAGES: usize = 100;
/// Deployments searched for a suffix: the newest this many (the server's page maximum).
pub(crate) const DEPLOYMENTS_SEARCHED: u32 = 1000;
/// Matches named in an "ambiguous" message.
const NAMED: usize = 10;

/// Check what was typed, before any request: an id's characters and at least
/// [`MIN_SUFFIX`] of them.
pub(crate) fn check_ref(what: &str, input: &str) -> OpResult<()> {
    check_id(what, input)?;
    if input.len() < MIN_SUFFIX {
        return Err(OpError::Usage(format!(
            "{what} id {input:?} is too short: type the full id or at least its last \
             {MIN_SUFFIX} characters"
        )));
    }
    Ok(())
}

/// The one id among `candidates` that equals `input` or ends with it.
pub(crate) fn pick<'a>(
    what: &str,
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> OpResult<String> {
    let mut matches: Vec<&str> = Vec::new();
    for id in candidates {
        if id == input {
            return Ok(id.to_owned());
        }
        if id.ends_with(input) && !matches.contains(&id) {
            matches.push(id);
        }
    }
    match matches.as_slice() {
        [] => Err(OpError::Failed(format!("no {what} id ends with {input:?}"))),
        [one] => Ok((*one).to_owned()),
        many => {
            let mut names = many
                .iter()
                .take(NAMED)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if many.len() > NAMED {
                names.push_str(&format!(", … ({} more)", many.len() - NAMED));
            }
            Err(OpError::Failed(format!(
                "{what} id {input:?} is ambiguous: {} {what}s end with it ({names}); \
                 type more characters",
                many.len()
            )))
        }
    }
}

/// Whether `input` is taken as a whole id without a lookup.
fn is_full(input: &str) -> bool {
    input.len() >= FULL_ID_LEN
}

/// Resolve typed device ids (each already [`check_ref`]ed) to full ids, in order, with
/// one scan of the device list for all of them.
pub(crate) async fn devices(api: &Api, inputs: &[String]) -> OpResult<Vec<String>> {
    let wanted: Vec<&str> = inputs
        .iter()
        .map(String::as_str)
        .filter(|i| !is_full(i))
        .collect();
    let mut found: Vec<String> = Vec::new();
    if !wanted.is_empty() {
        let mut q = DeviceQuery {
            limit: Some(MAX_PAGE),
            ..DeviceQuery::default()
        };
        let mut pages = 0;
        loop {
            let page = api.devices(&q).await?;
            pages += 1;
            let full = page.len() == MAX_PAGE as usize;
            let after = page.last().map(|d| d.device_id.clone());
            found.extend(
                page.into_iter()
                    .map(|d| d.device_id)
                    .filter(|id| wanted.iter().any(|w| id.ends_with(w))),
            );
            // A cursor that does not move would loop forever (a broken server or proxy).
            if !full || after.is_none() || after == q.after {
                break;
            }
            if pages == MAX_DEVICE_PAGES {
                return Err(OpError::Failed(format!(
                    "more than {} devices: type full device ids",
                    MAX_DEVICE_PAGES * MAX_PAGE as usize
                )));
            }
            q.after = after;
        }
    }
    inputs
        .iter()
        .map(|input| {
            if is_full(input) {
                Ok(input.clone())
            } else {
                pick("device", input, found.iter().map(String::as_str))
            }
        })
        .collect()
}

/// Resolve one typed device id.
pub(crate) async fn device(api: &Api, input: &str) -> OpResult<String> {
    let mut ids = devices(api, &[input.to_owned()]).await?;
    Ok(ids.remove(0))
}

/// Resolve one typed deployment id among the newest [`DEPLOYMENTS_SEARCHED`].
pub(crate) async fn deployment(api: &Api, input: &str) -> OpResult<String> {
    if is_full(input) {
        return Ok(input.to_owned());
    }
    let list = api.deployments(None, DEPLOYMENTS_SEARCHED, false).await?;
    pick("deployment", input, list.iter().map(|d| d.id.as_str())).map_err(|e| match e {
        OpError::Failed(m) if list.len() == DEPLOYMENTS_SEARCHED as usize => OpError::Failed(
            format!("{m} (among the newest {DEPLOYMENTS_SEARCHED}; type an older one in full)"),
        ),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0198a3f2c1d47c3e9b2a5f0e1d2c3b4a";
    const B: &str = "0198a3f2c1d47c3e9b2a5f0e1d2cffff";
    const C: &str = "0198a3f2c1d47c3e9b2a5f0e1d2c3b4b";

    #[test]
    fn a_short_or_malformed_id_is_a_usage_error() {
        assert!(check_ref("device", "2c3b4a").is_ok());
        assert!(check_ref("device", A).is_ok());
        for bad in ["3b4a", "c3b4a", "", "a/b/c/d"] {
            assert_eq!(
                check_ref("device", bad).unwrap_err().exit_code(),
                2,
                "{bad}"
            );
        }
        let short = check_ref("device", "3b4a").unwrap_err().to_string();
        assert!(short.contains("at least its last 6"), "{short}");
    }

    #[test]
    fn a_unique_suffix_or_the_full_id_picks_one() {
        let ids = [A, B, C];
        assert_eq!(pick("device", "2c3b4a", ids).unwrap(), A);
        assert_eq!(pick("device", "1d2cffff", ids).unwrap(), B);
        assert_eq!(pick("device", A, ids).unwrap(), A);
    }

    #[test]
    fn unknown_and_ambiguous_suffixes_exit_1_and_say_so() {
        let ids = [A, B, C];
        let none = pick("device", "abcdef", ids).unwrap_err();
        assert_eq!(none.exit_code(), 1);
        assert_eq!(none.to_string(), "no device id ends with \"abcdef\"");
        let two = pick("deployment", "123456", ["aaaa-123456", B, "bbbb-123456"]).unwrap_err();
        assert_eq!(two.exit_code(), 1);
        let m = two.to_string();
        assert!(m.contains("ambiguous: 2 deployments"), "{m}");
        assert!(
            m.contains("aaaa-123456") && m.contains("bbbb-123456") && !m.contains(B),
            "{m}"
        );
    }

    #[test]
    fn an_exact_id_wins_over_longer_ones_ending_with_it() {
        assert_eq!(
            pick("device", "sensor-01", ["bay-sensor-01", "sensor-01"]).unwrap(),
            "sensor-01"
        );
    }

    #[test]
    fn an_ambiguous_message_names_at_most_ten() {
        let ids: Vec<String> = (0..15).map(|i| format!("{i:02}-suffix")).collect();
        let m = pick("device", "suffix", ids.iter().map(String::as_str))
            .unwrap_err()
            .to_string();
        assert!(m.contains("15 devices") && m.contains("(5 more)"), "{m}");
    }
}
