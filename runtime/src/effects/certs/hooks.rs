//! Reload hooks: the commands that make a server pick up a certificate the
//! store just installed (`systemctl reload nginx`, a Stalwart reload).
//!
//! A hook runs after the install is complete and durable, outside the
//! handler call: the partition goes on at once, and whatever the hook does
//! (fail, hang, crash) never undoes the install. Each run has a timeout,
//! after which the command is killed; its result is logged and counted in
//! `herald_cert_hooks_total{hook,result}`. Runs of one hook never overlap:
//! a server is not reloaded twice at the same time. The runs waiting are
//! bounded: one per hook and domain (an install that comes while that
//! domain's run waits joins it, since the run reloads what is installed by
//! then), at most [`MAX_WAITING`] domains per hook.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// One hook as configured (`certificates.hooks[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The hook's name in logs and metrics (`name`, default: the program).
    pub name: String,
    /// Domain patterns: `*` (every domain), `*.example.com` (one label under
    /// it) or an exact name, case-insensitive.
    pub domains: Vec<String>,
    /// The program and its arguments; no shell (use `["sh", "-c", "…"]`).
    pub command: Vec<String>,
    /// How long a run may take before it is killed (`timeout`, default 30s).
    pub timeout: Duration,
}

/// Default of a hook's `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Hook {
    /// The first of `domains` this hook is for.
    fn matches<'a>(&self, domains: &'a [String]) -> Option<&'a String> {
        domains.iter().find(|d| {
            self.domains
                .iter()
                .any(|p| p == "*" || herald_guest::x509::covers(p, d))
        })
    }
}

/// What one run came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ran {
    Ok,
    Failed(String),
    TimedOut,
}

impl Ran {
    fn label(&self) -> &'static str {
        match self {
            Ran::Ok => "ok",
            Ran::Failed(_) => "failed",
            Ran::TimedOut => "timeout",
        }
    }
}

/// The installed files a hook is told about.
pub struct Installed {
    pub domains: Vec<String>,
    pub fullchain: PathBuf,
    pub privkey: PathBuf,
    pub not_after: u64,
}

/// The configured hooks, each with its queue.
#[derive(Default)]
pub struct Hooks {
    hooks: Vec<(Hook, Arc<Mutex<Queue>>)>,
}

/// The most domains one hook may have waiting; past it the oldest waiting
/// run is dropped (and counted), so a flood of installs cannot grow the
/// node's memory.
pub const MAX_WAITING: usize = 1024;

/// One hook's runs to come: at most one per domain (a run reloads what is
/// installed *now*, so installs that arrive while a run waits join it),
/// each with whoever waits for its result.
#[derive(Default)]
struct Queue {
    running: bool,
    waiting: std::collections::BTreeMap<String, (Installed, Vec<oneshot::Sender<Ran>>)>,
    /// The order in which the waiting domains came, oldest first.
    order: std::collections::VecDeque<String>,
}

impl Hooks {
    pub fn new(hooks: Vec<Hook>) -> Hooks {
        Hooks {
            hooks: hooks
                .into_iter()
                .map(|h| (h, Arc::new(Mutex::new(Queue::default()))))
                .collect(),
        }
    }

    /// Queue the hooks for a completed install, to run in the background;
    /// `paths` gives the installed files of a domain. Returns where each
    /// run's result will come (for tests).
    pub fn after_install(
        &self,
        domains: &[String],
        not_after: u64,
        paths: impl Fn(&str) -> (PathBuf, PathBuf),
    ) -> Vec<oneshot::Receiver<Ran>> {
        let mut results = Vec::new();
        for (hook, queue) in &self.hooks {
            let Some(domain) = hook.matches(domains) else {
                continue;
            };
            let (fullchain, privkey) = paths(domain);
            let installed = Installed {
                domains: domains.to_vec(),
                fullchain,
                privkey,
                not_after,
            };
            let (tx, rx) = oneshot::channel();
            results.push(rx);
            let mut q = queue.lock().unwrap();
            match q.waiting.get_mut(domain) {
                Some((waiting, senders)) => {
                    *waiting = installed;
                    senders.push(tx);
                    metrics::counter!("herald_cert_hooks_joined_total", "hook" => hook.name.clone())
                        .increment(1);
                }
                None => {
                    q.waiting.insert(domain.clone(), (installed, vec![tx]));
                    q.order.push_back(domain.clone());
                    if q.order.len() > MAX_WAITING
                        && let Some(oldest) = q.order.pop_front()
                    {
                        q.waiting.remove(&oldest);
                        tracing::warn!(
                            hook = hook.name,
                            domain = oldest,
                            "too many certificate hook runs waiting; dropping the oldest"
                        );
                        metrics::counter!("herald_cert_hooks_dropped_total", "hook" => hook.name.clone())
                            .increment(1);
                    }
                }
            }
            if !q.running {
                q.running = true;
                tokio::spawn(drain(hook.clone(), queue.clone()));
            }
        }
        results
    }
}

/// Run `hook` for each waiting domain in turn, one at a time (a server is
/// not reloaded twice at once), until none waits.
async fn drain(hook: Hook, queue: Arc<Mutex<Queue>>) {
    loop {
        let (domain, (installed, waiters)) = {
            let mut q = queue.lock().unwrap();
            let Some(domain) = q.order.pop_front() else {
                q.running = false;
                return;
            };
            // `order` and `waiting` hold the same domains: both gain and
            // lose one together, under this lock.
            let waiting = q
                .waiting
                .remove(&domain)
                .expect("a waiting domain has its run");
            (domain, waiting)
        };
        let ran = run(&hook, &domain, &installed).await;
        metrics::counter!("herald_cert_hooks_total", "hook" => hook.name.clone(),
            "result" => ran.label())
        .increment(1);
        match &ran {
            Ran::Ok => tracing::info!(hook = hook.name, domain, "certificate hook ran"),
            Ran::Failed(why) => tracing::warn!(hook = hook.name, domain, error = %why,
                "certificate hook failed; the certificate stays installed"),
            Ran::TimedOut => tracing::warn!(hook = hook.name, domain,
                timeout = ?hook.timeout, "certificate hook timed out and was killed; \
                the certificate stays installed"),
        }
        for waiter in waiters {
            let _ = waiter.send(ran.clone());
        }
    }
}

/// Run one hook with the install in its environment.
async fn run(hook: &Hook, domain: &str, installed: &Installed) -> Ran {
    let Some((program, args)) = hook.command.split_first() else {
        return Ran::Failed("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("HERALD_CERT_DOMAIN", domain)
        .env("HERALD_CERT_DOMAINS", installed.domains.join(","))
        .env("HERALD_CERT_FULLCHAIN", &installed.fullchain)
        .env("HERALD_CERT_PRIVKEY", &installed.privkey)
        .env("HERALD_CERT_NOT_AFTER", installed.not_after.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ran::Failed(format!("cannot start `{program}`: {e}")),
    };
    match tokio::time::timeout(hook.timeout, child.wait_with_output()).await {
        // Dropping the future drops the child, which kills it.
        Err(_) => Ran::TimedOut,
        Ok(Err(e)) => Ran::Failed(format!("waiting for `{program}`: {e}")),
        Ok(Ok(out)) if out.status.success() => Ran::Ok,
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Ran::Failed(format!(
                "`{program}` {}: {}",
                out.status,
                crate::bounded::cut(stderr.trim(), 512)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(domains: &[&str], script: &str, timeout: Duration) -> Hook {
        Hook {
            name: "t".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout,
        }
    }

    fn paths(d: &str) -> (PathBuf, PathBuf) {
        (
            PathBuf::from(format!("/c/{d}/fullchain.pem")),
            PathBuf::from(format!("/c/{d}/privkey.pem")),
        )
    }

    #[tokio::test]
    async fn hooks_get_the_install_in_their_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "echo \"$HERALD_CERT_DOMAIN $HERALD_CERT_DOMAINS $HERALD_CERT_FULLCHAIN \
             $HERALD_CERT_PRIVKEY $HERALD_CERT_NOT_AFTER\" > {}",
            out.display()
        );
        let hooks = Hooks::new(vec![
            hook(&["*.example.com"], &script, DEFAULT_TIMEOUT),
            hook(&["other.example.org"], "exit 0", DEFAULT_TIMEOUT),
        ]);
        let domains = vec!["example.com".to_string(), "mail.example.com".to_string()];
        let runs = hooks.after_install(&domains, 42, paths);
        assert_eq!(runs.len(), 1, "only the matching hook runs");
        assert_eq!(runs.into_iter().next().unwrap().await.unwrap(), Ran::Ok);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "mail.example.com example.com,mail.example.com /c/mail.example.com/fullchain.pem \
             /c/mail.example.com/privkey.pem 42"
        );
    }

    #[tokio::test]
    async fn failing_and_hanging_hooks_are_reported_and_killed() {
        let hooks = Hooks::new(vec![
            hook(&["*"], "echo broken >&2; exit 3", DEFAULT_TIMEOUT),
            hook(&["*"], "sleep 30", Duration::from_millis(200)),
            Hook {
                command: vec!["/nonexistent/reload".into()],
                ..hook(&["*"], "", DEFAULT_TIMEOUT)
            },
        ]);
        let started = std::time::Instant::now();
        let mut results = Vec::new();
        for run in hooks.after_install(&["a.example".to_string()], 1, paths) {
            results.push(run.await.unwrap());
        }
        // The 30 s sleeper was killed at its timeout, not waited for.
        assert!(started.elapsed() < Duration::from_secs(28));
        match &results[0] {
            Ran::Failed(why) => assert!(why.contains("exit status: 3") && why.contains("broken")),
            other => panic!("{other:?}"),
        }
        assert_eq!(results[1], Ran::TimedOut);
        assert!(matches!(&results[2], Ran::Failed(why) if why.contains("cannot start")));
    }

    #[tokio::test]
    async fn installs_that_come_while_a_run_waits_join_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs");
        let script = format!("echo run >> {}; sleep 0.2", out.display());
        let hooks = Hooks::new(vec![hook(&["*"], &script, DEFAULT_TIMEOUT)]);
        let mut results = Vec::new();
        for _ in 0..200 {
            results.extend(hooks.after_install(&["a.example".to_string()], 1, paths));
        }
        for r in results {
            assert_eq!(r.await.unwrap(), Ran::Ok);
        }
        let runs = std::fs::read_to_string(&out).unwrap().lines().count();
        assert!((1..=2).contains(&runs), "{runs} runs for 200 installs");
        assert!(hooks.hooks[0].1.lock().unwrap().waiting.is_empty());
    }

    #[tokio::test]
    async fn the_waiting_runs_are_bounded() {
        let hooks = Hooks::new(vec![hook(&["*"], "sleep 0.2", DEFAULT_TIMEOUT)]);
        let mut results = Vec::new();
        for i in 0..MAX_WAITING + 10 {
            results.extend(hooks.after_install(&[format!("d{i}.example")], 1, paths));
        }
        assert_eq!(hooks.hooks[0].1.lock().unwrap().waiting.len(), MAX_WAITING);
        // The oldest ten were dropped: their results never come.
        let dropped = results.drain(..10).collect::<Vec<_>>();
        for r in dropped {
            assert!(r.await.is_err());
        }
    }
}
