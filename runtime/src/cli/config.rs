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
    let create = match &c.topics.create {
        Some(t) => format!(
            " (created when missing: {} partitions, replication factor {})",
            t.partitions, t.replication_factor
        ),
        None => String::new(),
    };
    writeln!(
        out,
        "topics: events {}, dead letters {}{create}",
        c.topics.events,
        c.topics.dead_letter(&c.topics.events)
    )?;
    if c.stalwart.enabled {
        let node = c
            .stalwart
            .node_id
            .map_or("-".to_string(), |n| n.to_string());
        writeln!(out, "stalwart: topic {}, node id {node}", c.stalwart.topic)?;
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
        assert!(out.contains("broadcast: stalwart-cluster.node-1"), "{out}");
        assert!(out.contains("shared: stalwart-cluster\n"), "{out}");
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
