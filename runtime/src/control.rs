//! Per-handler control: pause, resume, replay, and where a new handler
//! starts.
//!
//! A broadcast handler normally runs in its node's broadcast group with the
//! other broadcast handlers, which share that group's offsets. To stop one
//! handler while the others go on, or to make one handle history again,
//! the handler must keep offsets of its own: it is *detached* into a group
//! of its own, `<broadcast group>.handler.<name>`, which starts exactly where
//! the broadcast group had committed (or where a replay or the manifest's
//! `start` says), and stays there. A paused handler's group runs no
//! consumer: its offsets stay where they were, and its lag grows.
//!
//! What is detached, what is paused, and which handlers this node has run
//! before (a manifest's `start` applies to a handler new to the node) are
//! kept in `handlers.json` in the state directory, so a restart keeps them.
//! Commands come from the local API and are carried out by the node's
//! supervisor, which owns the consumers (`Node::supervise`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::kafka::consumer;
use crate::manifest::{Mode, StartAt};

/// The file in the state directory.
pub const FILE: &str = "handlers.json";

/// What the operator asks of one handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Replay(StartAt),
}

/// A command on its way to the supervisor, with where its answer goes.
pub struct Request {
    pub handler: String,
    pub command: Command,
    pub done: oneshot::Sender<Result<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detached {
    pub paused: bool,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    /// Handlers this node has run.
    known: BTreeSet<String>,
    detached: BTreeMap<String, Detached>,
}

pub struct Control {
    path: PathBuf,
    saved: Mutex<Saved>,
    requests: mpsc::UnboundedSender<Request>,
    /// The node's broadcast and shared groups: the lag of a handler that is
    /// in its mode's group.
    mode_groups: [Arc<consumer::Status>; 2],
    /// The running detached groups' consumer status (lag), by handler.
    pub statuses: Mutex<BTreeMap<String, Arc<consumer::Status>>>,
    /// The lag of paused handlers, read from the broker now and then.
    pub paused_lag: Mutex<BTreeMap<String, i64>>,
}

impl Control {
    /// Open the state directory's file; the receiver is the supervisor's.
    /// `mode_groups`: the broadcast and the shared group's status.
    pub fn open(
        state_dir: &Path,
        mode_groups: [Arc<consumer::Status>; 2],
    ) -> anyhow::Result<(Control, mpsc::UnboundedReceiver<Request>)> {
        let path = state_dir.join(FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not herald's handler state", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Control {
                path,
                saved: Mutex::new(saved),
                requests: tx,
                mode_groups,
                statuses: Default::default(),
                paused_lag: Default::default(),
            },
            rx,
        ))
    }

    /// Ask the supervisor; its answer says what was done.
    pub async fn request(&self, handler: &str, command: Command) -> Result<String, String> {
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request {
                handler: handler.to_string(),
                command,
                done,
            })
            .map_err(|_| "the node is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the node is stopping".to_string())?
    }

    /// The handler's state, if it is detached.
    pub fn detached(&self, handler: &str) -> Option<Detached> {
        self.saved.lock().unwrap().detached.get(handler).cloned()
    }

    /// Every detached handler.
    pub fn all_detached(&self) -> BTreeMap<String, Detached> {
        self.saved.lock().unwrap().detached.clone()
    }

    pub fn set_detached(&self, handler: &str, state: Detached) -> anyhow::Result<()> {
        let mut saved = self.saved.lock().unwrap();
        saved.detached.insert(handler.to_string(), state);
        self.save(&saved)
    }

    /// Those of `handlers` this node has not run yet.
    pub fn new_among(&self, handlers: &[String]) -> Vec<String> {
        let saved = self.saved.lock().unwrap();
        handlers
            .iter()
            .filter(|h| !saved.known.contains(*h))
            .cloned()
            .collect()
    }

    /// Remember `handlers` as run on this node; returns those new to it.
    pub fn note_known(&self, handlers: &[String]) -> anyhow::Result<Vec<String>> {
        let mut saved = self.saved.lock().unwrap();
        let new: Vec<String> = handlers
            .iter()
            .filter(|h| !saved.known.contains(*h))
            .cloned()
            .collect();
        if !new.is_empty() {
            saved.known.extend(new.iter().cloned());
            self.save(&saved)?;
        }
        Ok(new)
    }

    /// The records not handled yet, for a handler in its own group: its
    /// consumer's lag when running, the last reading when paused.
    pub fn lag(&self, handler: &str) -> Option<i64> {
        match self.detached(handler)? {
            Detached { paused: true } => self.paused_lag.lock().unwrap().get(handler).copied(),
            Detached { paused: false } => self
                .statuses
                .lock()
                .unwrap()
                .get(handler)
                .and_then(|s| s.total_lag()),
        }
    }

    /// Whether `handler` (of `mode`) is paused, and its lag: its own
    /// group's when it is detached, else that of its mode's group.
    pub fn handler_lag(&self, handler: &str, mode: Mode) -> (bool, Option<i64>) {
        match self.detached(handler) {
            Some(d) => (d.paused, self.lag(handler)),
            None => {
                let [broadcast, shared] = &self.mode_groups;
                let group = match mode {
                    Mode::Broadcast => broadcast,
                    Mode::Shared => shared,
                };
                (false, group.total_lag())
            }
        }
    }

    /// Whether the group of `mode` hands events to `handler`: a shared
    /// handler always; a broadcast one once it is known to this node (its
    /// `start` dealt with) and not in a group of its own.
    pub fn in_mode_group(&self, handler: &str, mode: Mode) -> bool {
        let saved = self.saved.lock().unwrap();
        mode == Mode::Shared
            || (saved.known.contains(handler) && !saved.detached.contains_key(handler))
    }

    fn save(&self, saved: &Saved) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(saved).expect("handler state serialises");
        crate::durable::replace(&self.path, &text)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The group a detached handler runs in.
pub fn group(broadcast_group: &str, handler: &str) -> String {
    format!("{broadcast_group}.handler.{handler}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_detached_and_known_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _rx) = Control::open(dir.path(), Default::default()).unwrap();
        assert_eq!(c.note_known(&["a".into(), "b".into()]).unwrap(), ["a", "b"]);
        c.set_detached("a", Detached { paused: true }).unwrap();
        drop(c);
        let (c, _rx) = Control::open(dir.path(), Default::default()).unwrap();
        assert_eq!(c.note_known(&["a".into(), "c".into()]).unwrap(), ["c"]);
        assert_eq!(c.detached("a"), Some(Detached { paused: true }));
        assert_eq!(c.detached("b"), None);
        std::fs::write(dir.path().join(FILE), "junk").unwrap();
        let e = Control::open(dir.path(), Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("handlers.json"), "{e}");
    }
}
