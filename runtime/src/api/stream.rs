//! `GET /v1/stream`: Server-Sent Events for the mail server's IDLE and
//! EventSource sessions on this node.
//!
//! `?account=N` streams that account's state changes; without it, every
//! notice (state changes of all accounts, new certificates). The first event
//! is `ready`, sent once the subscription is in place, so a client knows
//! from when on it will hear of changes. A subscriber that falls more than
//! the buffer behind gets a `lagged` event with the number of notices it
//! missed (and should resynchronise, as after a reconnect); event handling
//! never waits for it.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::Api;

#[derive(Deserialize)]
pub(super) struct Params {
    account: Option<u32>,
}

pub(super) async fn stream(State(api): State<Api>, Query(p): Query<Params>) -> Response {
    // Each subscription holds a permit for as long as its stream lives.
    let Ok(permit) = api.streams.clone().try_acquire_owned() else {
        metrics::counter!("herald_api_connections_refused_total", "why" => "api.maxStreams")
            .increment(1);
        return super::error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many streams open (api.maxStreams); retry later".to_string(),
        );
    };
    let rx = api.notices.subscribe(p.account);
    let ready = futures::stream::once(async move {
        Ok::<_, Infallible>(Sse::default().event("ready").data(match p.account {
            Some(a) => format!("{{\"account\":{a}}}"),
            None => "{}".to_string(),
        }))
    });
    let notices = BroadcastStream::new(rx).map(move |item| {
        let _held = &permit;
        Ok::<_, Infallible>(match item {
            Ok(notice) => Sse::default()
                .event(notice.name())
                .json_data(&notice)
                .unwrap_or_else(|_| Sse::default().event("error")),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Sse::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
        })
    });
    axum::response::sse::Sse::new(ready.chain(notices))
        .keep_alive(KeepAlive::default())
        .into_response()
}
