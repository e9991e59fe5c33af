//! Notices for the mail server's processes on this node: state changes for
//! IDLE/EventSource sessions, new certificates. Subscribers of one account
//! get only that account's changes; "all" subscribers get everything.
//!
//! Each subscriber has a bounded buffer. A subscriber that falls behind
//! loses the oldest notices and is told how many (tokio's broadcast
//! `Lagged`), so a slow reader never slows event handling down.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::event::DataTypes;

/// Notices a subscriber may miss before it is told it lagged.
pub const BUFFER: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Notice {
    #[serde(rename_all = "camelCase")]
    StateChange {
        account_id: u32,
        change_id: u64,
        types: DataTypes,
    },
    #[serde(rename_all = "camelCase")]
    Certificate {
        domains: Vec<String>,
        not_after: u64,
    },
}

impl Notice {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Notice::StateChange { .. } => "state-change",
            Notice::Certificate { .. } => "certificate",
        }
    }
}

pub struct Hub {
    accounts: Mutex<HashMap<u32, broadcast::Sender<Notice>>>,
    all: broadcast::Sender<Notice>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            accounts: Mutex::new(HashMap::new()),
            all: broadcast::channel(BUFFER).0,
        }
    }
}

impl Hub {
    /// Subscribe to one account's state changes, or to everything.
    pub fn subscribe(&self, account: Option<u32>) -> broadcast::Receiver<Notice> {
        match account {
            None => self.all.subscribe(),
            Some(id) => self
                .accounts
                .lock()
                .unwrap()
                .entry(id)
                .or_insert_with(|| broadcast::channel(BUFFER).0)
                .subscribe(),
        }
    }

    pub fn publish(&self, notice: Notice) {
        if let Notice::StateChange { account_id, .. } = &notice {
            let mut accounts = self.accounts.lock().unwrap();
            if let Some(tx) = accounts.get(account_id) {
                if tx.receiver_count() == 0 {
                    // Every session of that account has gone.
                    accounts.remove(account_id);
                } else {
                    let _ = tx.send(notice.clone());
                }
            }
        }
        // No subscriber is not an error: nobody is listening.
        let _ = self.all.send(notice);
    }

    /// Release the channels of accounts whose subscribers have all gone.
    /// Run periodically: without it, a client that subscribes to many
    /// accounts and leaves would keep a channel per account for good.
    pub fn prune(&self) -> usize {
        let mut accounts = self.accounts.lock().unwrap();
        let before = accounts.len();
        accounts.retain(|_, tx| tx.receiver_count() > 0);
        before - accounts.len()
    }

    /// Accounts with at least one subscriber.
    pub fn accounts(&self) -> usize {
        self.accounts
            .lock()
            .unwrap()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(account_id: u32, change_id: u64) -> Notice {
        Notice::StateChange {
            account_id,
            change_id,
            types: DataTypes(1),
        }
    }

    #[test]
    fn departed_subscribers_channels_are_released() {
        let hub = Hub::default();
        let kept = hub.subscribe(Some(1));
        for account in 2..1000 {
            drop(hub.subscribe(Some(account)));
        }
        assert_eq!(hub.prune(), 998);
        assert_eq!(hub.accounts.lock().unwrap().len(), 1);
        drop(kept);
    }

    #[tokio::test]
    async fn accounts_only_hear_their_own_and_slow_readers_are_told() {
        let hub = Hub::default();
        let mut five = hub.subscribe(Some(5));
        let mut all = hub.subscribe(None);
        hub.publish(change(6, 1));
        hub.publish(change(5, 2));
        assert_eq!(five.recv().await.unwrap(), change(5, 2));
        assert_eq!(all.recv().await.unwrap(), change(6, 1));
        for i in 0..(BUFFER as u64 + 10) {
            hub.publish(change(5, 100 + i));
        }
        match five.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("{other:?}"),
        }
    }
}
