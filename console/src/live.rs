//! The live feed: `GET /events` read as Server-Sent Events, reconnecting by itself with
//! backoff. Each (re)connection is announced so the app can re-read what it missed.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use kernex_common::api::events::{EventError, ServerEvent};
use tokio::sync::mpsc;

use crate::api::{Api, ApiError};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A stream that stayed open this long counts as having worked.
const HEALTHY: Duration = Duration::from_secs(30);
/// The server writes a keep-alive comment every 15 s: a stream silent this long is dead
/// even if no error says so (a hung server, a network path that dropped silently).
const SILENT_FOR: Duration = Duration::from_secs(40);
/// `Alive` is sent at most this often.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// The stream is open (again): state may have changed meanwhile.
    Connected,
    /// The stream failed; the next attempt comes after `retry_in`.
    Disconnected {
        error: String,
        attempt: u32,
        retry_in: Duration,
    },
    /// The server refused our token (401/403): retried slowly, shown as such.
    Refused { error: String },
    /// The server dropped events for us: re-read everything.
    Lagged,
    /// Bytes arrived (a keep-alive or an event): the server is there. Sent at most once a
    /// second; it is what lets the app tell a silent device from a silent server.
    Alive,
    /// Any other event, read once here (never a `Lagged` one: that is the variant above).
    /// Boxed: a deployment event with its rollout is several times the other variants.
    Event(Box<ServerEvent>),
}

/// Follow the event stream until `tx` closes, sending what happens.
pub async fn follow<T: From<LiveEvent> + Send + 'static>(api: Api, tx: mpsc::Sender<T>) {
    let mut attempt: u32 = 0;
    loop {
        let down = match api.events().await {
            Ok(resp) => {
                if tx.send(LiveEvent::Connected.into()).await.is_err() {
                    return;
                }
                let opened = tokio::time::Instant::now();
                let mut heard = false;
                // Keep-alive comments never come out of the event parser: see the bytes.
                let (alive, mut said) = (tx.clone(), None::<tokio::time::Instant>);
                let bytes = resp.bytes_stream().inspect(move |_| {
                    if said.is_none_or(|t| t.elapsed() >= ALIVE_EVERY) {
                        said = Some(tokio::time::Instant::now());
                        let _ = alive.try_send(LiveEvent::Alive.into());
                    }
                });
                let mut stream = bytes.eventsource();
                let mut error = "the server closed the event stream".to_owned();
                loop {
                    let item = match tokio::time::timeout(SILENT_FOR, stream.next()).await {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(_) => {
                            error = format!(
                                "nothing from the server for {} s (not even a keep-alive)",
                                SILENT_FOR.as_secs()
                            );
                            break;
                        }
                    };
                    let ev = match item {
                        Ok(ev) => ev,
                        Err(e) => {
                            error = format!("event stream broke: {e}");
                            break;
                        }
                    };
                    heard = true;
                    let msg = match ServerEvent::parse(&ev.event, &ev.data) {
                        Ok(ServerEvent::Lagged(lag)) => {
                            tracing::info!(missed = lag.missed, "fell behind the event stream");
                            LiveEvent::Lagged
                        }
                        // Whatever its count says, a lag means "re-read": never drop one.
                        Err(
                            e @ EventError::Data {
                                event: "lagged", ..
                            },
                        ) => {
                            tracing::warn!("{e}");
                            LiveEvent::Lagged
                        }
                        Ok(event) => LiveEvent::Event(Box::new(event)),
                        Err(e @ EventError::Unknown(_)) => {
                            tracing::debug!("ignored: {e}");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("{e}");
                            continue;
                        }
                    };
                    if tx.send(msg.into()).await.is_err() {
                        return;
                    }
                }
                // Only a stream that worked for a while resets the backoff: one that
                // opens and closes at once (a proxy, a server shutting down) must not
                // cause a full re-read every half second.
                if heard || opened.elapsed() >= HEALTHY {
                    attempt = 0;
                }
                Down::Lost(error)
            }
            Err(
                e @ ApiError::Refused {
                    status: 401 | 403, ..
                },
            ) => Down::Refused(e.to_string()),
            Err(e) => Down::Lost(e.to_string()),
        };
        attempt = attempt.saturating_add(1);
        let (msg, retry_in) = match down {
            Down::Lost(error) => {
                let retry_in = backoff(attempt);
                tracing::info!(attempt, "event stream down: {error}");
                let msg = LiveEvent::Disconnected {
                    error,
                    attempt,
                    retry_in,
                };
                (msg, retry_in)
            }
            Down::Refused(error) => {
                tracing::warn!("event stream refused: {error}");
                (LiveEvent::Refused { error }, MAX_BACKOFF)
            }
        };
        if tx.send(msg.into()).await.is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

enum Down {
    Lost(String),
    Refused(String),
}

/// 0.5 s, 1 s, 2 s … capped at 10 s: quick after a blip, gentle during an outage.
fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
