//! `GET /events`: Server-Sent Events for operators.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

/// Interval of the keep-alive comment line.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /events`. Each subscriber reads from the bounded broadcast buffer; one that
/// falls behind gets `event: lagged` with how many it missed, then carries on. The
/// stream ends when the server shuts down.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.require_operator()?;
    let stop = state.shutdown.clone().cancelled_owned();
    let events = BroadcastStream::new(state.events.subscribe()).map(|item| {
        Ok(match item {
            Ok(e) => SseEvent::default().event(e.kind).data(e.data.to_string()),
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": n }).to_string()),
        })
    });
    let events = events.take_until(stop);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}
