//! Accepting the API's connections within bounds.
//!
//! Anyone on the node can connect to the local API, token or not, so an
//! unbounded accept loop lets one local user hold thousands of idle
//! connections, each a task and buffers, until the node runs out of memory
//! or file descriptors that the event path needs too. Here every
//! connection takes a slot: at most `api.maxConnections` in all and
//! `api.maxConnectionsPerClient` per client: its user id over the Unix
//! socket, and over TCP too when it connects from this machine (the owner
//! of its socket, asked of the kernel (`api::owner`): every local user comes
//! from 127.0.0.1, so by address one of them could take every other local
//! user's slots, the mail server's included); its address otherwise. Past either, the connection gets a `503` at
//! once and is closed, before any request is read. A connection must send
//! a request's headers within `api.headerTimeout`, also between the
//! requests of a kept-alive connection, so idle ones give their slot back.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use crate::config::ApiLimits as Limits;

/// Who a connection comes from, for the per-client bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    Address(IpAddr),
    User(u32),
    Unknown,
}

/// Who a connection comes from, as far as accepting it tells.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    Known(Client),
    /// A TCP connection from this machine: its user is looked up (only
    /// once the connection may be admitted at all, since that reads the
    /// kernel's socket table).
    Local {
        local: SocketAddr,
        peer: SocketAddr,
    },
}

impl Peer {
    fn client(self) -> Client {
        match self {
            Peer::Known(client) => client,
            Peer::Local { local, peer } => match super::owner::local_uid(local, peer) {
                Some(uid) => Client::User(uid),
                None => Client::Address(peer.ip()),
            },
        }
    }
}

/// A listener the API serves: TCP or the Unix socket.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (io, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = io.set_nodelay(true);
        let who = match io.local_addr() {
            Ok(local) if peer.ip().is_loopback() || peer.ip() == local.ip() => {
                Peer::Local { local, peer }
            }
            _ => Peer::Known(Client::Address(peer.ip())),
        };
        Ok((io, who))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (io, _) = tokio::net::UnixListener::accept(self).await?;
        let client = match io.peer_cred() {
            Ok(cred) => Client::User(cred.uid()),
            Err(_) => Client::Unknown,
        };
        Ok((io, Peer::Known(client)))
    }
}

/// The slots taken, in all and per client.
#[derive(Default)]
struct Slots {
    total: usize,
    per_client: HashMap<Client, usize>,
}

/// A connection's slot, given back when the connection ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    client: Client,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap();
        s.total -= 1;
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

/// Take a slot for `client`, or say which bound is full.
fn admit(slots: &Arc<Mutex<Slots>>, limits: Limits, client: Client) -> Result<Slot, &'static str> {
    let mut s = slots.lock().unwrap();
    if s.total >= limits.connections {
        return Err("api.maxConnections");
    }
    let mine = s.per_client.entry(client).or_default();
    if *mine >= limits.per_client {
        return Err("api.maxConnectionsPerClient");
    }
    *mine += 1;
    s.total += 1;
    Ok(Slot {
        slots: slots.clone(),
        client,
    })
}

/// The whole answer to a connection past a bound, naming the bound; then
/// the connection closes.
fn busy(bound: &str) -> Vec<u8> {
    let body = format!("too many connections ({bound}); retry later\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `app` on `listener` until `stop`, then let the connections finish
/// (at most 5 s: SSE streams never do by themselves).
pub async fn serve(listener: impl Accept, app: Router, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut io, who) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin,
                // and let the connections that end free some.
                tracing::warn!(error = %e, "api: cannot accept a connection");
                metrics::counter!("herald_api_connections_refused_total", "why" => "accept")
                    .increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the total bound the connection is refused whoever it is,
        // without the cost of finding out.
        let full = slots.lock().unwrap().total >= limits.connections;
        let client = if full { Client::Unknown } else { who.client() };
        let slot = match admit(&slots, limits, client) {
            Ok(slot) => slot,
            Err(bound) => {
                metrics::counter!("herald_api_connections_refused_total", "why" => bound)
                    .increment(1);
                // Written without waiting long (a client that does not
                // read gets nothing), and without a slot.
                tokio::spawn(async move {
                    let answer = busy(bound);
                    let _ = tokio::time::timeout(Duration::from_millis(100), io.write_all(&answer))
                        .await;
                });
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_all_and_per_client_and_given_back() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let limits = Limits {
            connections: 3,
            per_client: 2,
            ..Limits::default()
        };
        let a = Client::Address("127.0.0.1".parse().unwrap());
        let b = Client::User(1000);
        let first = admit(&slots, limits, a).unwrap();
        let _second = admit(&slots, limits, a).unwrap();
        assert_eq!(
            admit(&slots, limits, a).err(),
            Some("api.maxConnectionsPerClient")
        );
        let _third = admit(&slots, limits, b).unwrap();
        assert_eq!(admit(&slots, limits, b).err(), Some("api.maxConnections"));
        drop(first);
        let _again = admit(&slots, limits, a).unwrap();
        assert_eq!(slots.lock().unwrap().total, 3);
    }

    #[tokio::test]
    async fn a_local_tcp_client_is_known_by_its_user() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_io, who) = Accept::accept(&listener).await.unwrap();
        let me = std::fs::metadata("/proc/self").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(who.client(), Client::User(me.uid()));
    }
}
