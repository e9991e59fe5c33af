//! The local API as a client sees it: a Server-Sent Events subscription
//! (`GET /v1/stream`) read event by event, for the tests and the latency
//! benchmark.

use std::time::Duration;

use serde_json::Value;

use crate::cluster::{NodeProcess, TOKEN};

/// How long a stream waits for its next event before the test fails.
const LONG: Duration = Duration::from_secs(60);

/// A Server-Sent Events subscription, read event by event.
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    pub async fn open(node: &mut NodeProcess, query: &str) -> Stream {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/stream{query}", node.api()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut s = Stream {
            response,
            buffer: String::new(),
        };
        let (event, _) = s.next().await;
        assert_eq!(event, "ready");
        s
    }

    /// The next (event, data), skipping keep-alive comments.
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if event.is_empty() {
                    continue;
                }
                return (event, serde_json::from_str(&data).unwrap_or(Value::Null));
            }
            let chunk = tokio::time::timeout(LONG, self.response.chunk())
                .await
                .expect("stream event")
                .unwrap()
                .expect("stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// `GET path` on `node`'s API with the test token: the status and the JSON
/// body (null if it is not JSON).
pub async fn get(node: &mut NodeProcess, path: &str) -> (u16, Value) {
    let (status, text) = get_text(node, path).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET /metrics` on `node`'s API with the test token: the exposition text.
pub async fn metrics(node: &mut NodeProcess) -> String {
    let (status, text) = get_text(node, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

/// `GET path` with the test token: the status and the body as text.
async fn get_text(node: &mut NodeProcess, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", node.api()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
