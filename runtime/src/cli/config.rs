//! `herald config check <file>`: validate a node's configuration without
//! connecting to anything, and print what the node would use.

use std::io::Write;
use std::path::Path;

use crate::config::Config;

/// Load and validate the configuration at `path` (nothing is connected to)
/// and print a short summary to `out`: brokers, node, consumer groups,
/// topics, handler folder and API, then `ok`. Secrets are not printed.
/// Errors begin with the path and name the field.
pub fn check(path: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    summary(&config, out)?;
    writeln!(out, "ok")?;
    Ok(())
}

fn summary(c: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "brokers: {}", c.brokers.join(", "))?;
    writeln!(out, "node: {}", c.node_id)?;
    writeln!(out, "groups:")?;
    writeln!(out, "  broadcast: {}", c.broadcast_group())?;
    writeln!(out, "  shared: {}", c.shared_group())?;
    writeln!(out, "  mail server's own (never joined): {}", c.group_id)?;
    let create = match &c.topics.create {
        Some(t) => format!(
            " (created when missing: {} partitions, replication factor {})",
            t.partitions, t.replication_factor
        ),
        None => String::new(),
    };
    writeln!(
        out,
        "topics: events {}, state {} (compacted), dead letters {} and {}{create}",
        c.topics.events,
        c.topics.state,
        c.topics.dead_letter(&c.topics.events),
        c.topics.dead_letter(&c.topics.state)
    )?;
    if c.stalwart.enabled {
        let node = c
            .stalwart
            .node_id
            .map_or("-".to_string(), |n| n.to_string());
        writeln!(out, "stalwart: topic {}, node id {node}", c.stalwart.topic)?;
    }
    let b = &c.blocklist;
    let protect: Vec<String> = b.protect.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "blocklist policy: IPv4 /{} or narrower, IPv6 /{} or narrower, at most {} entries, \
         reasons cut at {} bytes; never loopback, link-local, multicast, unspecified, this \
         node's or the brokers' addresses{}",
        b.min_prefix_v4,
        b.min_prefix_v6,
        b.max_entries,
        b.max_reason,
        if protect.is_empty() {
            String::new()
        } else {
            format!(", nor {}", protect.join(", "))
        }
    )?;
    writeln!(
        out,
        "publish: events more than {} handler publishes deep are dead-lettered",
        c.publish_max_hops
    )?;
    if c.push_allow_private {
        writeln!(
            out,
            "push: private and plain-http endpoints ALLOWED (push.allowPrivate; test setups only)"
        )?;
    } else {
        writeln!(out, "push: public https endpoints only")?;
    }
    let missing = if c.handlers.is_dir() {
        ""
    } else {
        " (no such folder yet)"
    };
    writeln!(out, "handlers: {}{missing}", c.handlers.display())?;
    let auth = match (&c.api.token, &c.api.token_file) {
        (Some(_), _) => "token set".to_string(),
        (None, Some(f)) => format!("token from {}", f.display()),
        (None, None) => "no token".to_string(),
    };
    write!(out, "api: listen {}", c.api.listen)?;
    if let Some(sock) = &c.api.unix_socket {
        write!(out, " and {}", sock.display())?;
    }
    writeln!(out, ", {auth}")?;
    if !c.kafka.is_empty() {
        let names: Vec<&str> = c.kafka.keys().map(String::as_str).collect();
        writeln!(out, "kafka properties: {}", names.join(", "))?;
    }
    if let Some(n) = &c.firewall.nftables {
        writeln!(
            out,
            "firewall: nftables table {} {} drops the blocklist at hook {} priority {} \
             (needs nft and CAP_NET_ADMIN)",
            n.family.as_str(),
            n.table,
            n.hook.as_str(),
            n.priority
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_example() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("herald.example.json");
        let mut out = Vec::new();
        check(&path, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("brokers: 127.0.0.1:9092"), "{out}");
        assert!(
            out.contains("broadcast: stalwart-cluster.herald.node-1"),
            "{out}"
        );
        assert!(out.contains("shared: stalwart-cluster.herald\n"), "{out}");
        assert!(out.contains("(never joined): stalwart-cluster\n"), "{out}");
        assert!(
            out.contains("blocklist policy: IPv4 /16 or narrower"),
            "{out}"
        );
        assert!(out.contains("push: public https endpoints only"), "{out}");
        assert!(out.contains("herald.events.dlq"), "{out}");
        assert!(out.contains("handlers: target/handlers"), "{out}");
        assert!(out.contains("127.0.0.1:8470"), "{out}");
        assert!(!out.contains("change-me"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
    }

    #[test]
    fn config_check_error_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"brokers": [], "groupId": "g"}"#).unwrap();
        let mut out = Vec::new();
        let e = check(&path, &mut out).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: field `brokers`", path.display())),
            "{e}"
        );
        assert!(e.contains("at least one broker is required"), "{e}");
        assert!(out.is_empty());
    }
}
