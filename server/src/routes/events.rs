//! `GET /events`: Server-Sent Events for operators.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use kernex_common::api::events::{LaggedEvent, ServerEvent};
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
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "streamEvents",
    tag = "events",
    summary = "Live events (Server-Sent Events)",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "An endless event stream. `event:` is one of heartbeat, device, deployment, bundle, config, lagged; `data:` is a JSON object. A `: keep-alive` comment every 15 s.", body = String, content_type = "text/event-stream"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.require_operator()?;
    let stop = state.shutdown.clone().cancelled_owned();
    let events = BroadcastStream::new(state.events.subscribe()).map(|item| {
        let event = match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                ServerEvent::Lagged(LaggedEvent { missed })
            }
        };
        Ok(SseEvent::default()
            .event(event.name())
            .data(event.data_json()))
    });
    let events = events.take_until(stop);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}
