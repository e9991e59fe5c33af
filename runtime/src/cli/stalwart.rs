//! The operator's `herald stalwart decode` and `herald stalwart encode`: look
//! inside a Stalwart v0.16 record from `stwt.agora`, or build one by hand.
//!
//! Both speak the same line format, so that decoding, editing and encoding
//! again is a shell pipeline: a first line `{"nodeId":N}`, then one line per
//! event, `{"kind":"<kind>","body":<body>}`, where kind and body are exactly
//! those of herald's JSON envelope (`docs/design.md`).

use std::io::{BufRead, Read, Write};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::stalwart::{self, Record};
use crate::event::Body;

/// The first line of the line format.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeLine {
    node_id: u16,
}

/// An event line as written: kind first, for the reader's eye.
#[derive(Serialize)]
struct EventLineOut<'a> {
    kind: &'a str,
    body: Value,
}

/// An event line as read; a missing body is `{}`, as in the envelope.
#[derive(Deserialize)]
struct EventLineIn {
    kind: String,
    #[serde(default)]
    body: Value,
}

/// `herald stalwart decode`: hex on the command line, or raw bytes on stdin when `hex` is None.
/// Writes `{"nodeId":N}` as the first line then one JSON line per event, in the form
/// `{"kind": "<kind>", "body": <Body::to_json()>}`; if the record has an error after some events, writes
/// those events then returns an error (anyhow) that names the byte offset (exit code non-zero).
pub fn decode_cmd(
    hex: Option<&str>,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let bytes = match hex {
        Some(text) => parse_hex(text)?,
        None => {
            let mut bytes = Vec::new();
            stdin
                .read_to_end(&mut bytes)
                .context("reading the record from standard input")?;
            bytes
        }
    };
    let decoded = stalwart::decode(&bytes).map_err(|e| anyhow!("cannot read the record: {e}"))?;
    write_line(
        out,
        &NodeLine {
            node_id: decoded.node_id,
        },
    )?;
    for event in &decoded.events {
        write_line(
            out,
            &EventLineOut {
                kind: event.kind(),
                body: event.to_json(),
            },
        )?;
    }
    out.flush()?;
    match decoded.error {
        None => Ok(()),
        Some(e) => Err(anyhow!(
            "the record is malformed after {} event(s): {e}",
            decoded.events.len()
        )),
    }
}

/// `herald stalwart encode`: reads those JSON lines (first line nodeId, then events; blank lines
/// ignored) and prints the hex of one record (plus newline). Errors name the line number.
///
/// All events go into one record, however many there are: Stalwart reads any
/// number, though it never writes more than
/// [`stalwart::MAX_EVENTS_PER_RECORD`] itself.
pub fn encode_cmd(input: &mut dyn BufRead, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut node_id = None;
    let mut events = Vec::new();
    // The input line of each event, to name it when the encoder refuses it.
    let mut event_lines = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let number = i + 1;
        let line = line.with_context(|| format!("line {number}: reading the input"))?;
        if line.trim().is_empty() {
            continue;
        }
        if node_id.is_none() {
            node_id = Some(parse_node_line(&line).map_err(|e| anyhow!("line {number}: {e}"))?);
        } else {
            events.push(parse_event_line(&line).map_err(|e| anyhow!("line {number}: {e}"))?);
            event_lines.push(number);
        }
    }
    let node_id =
        node_id.ok_or_else(|| anyhow!(r#"no input: the first line must be {{"nodeId":N}}"#))?;
    let bytes = stalwart::encode(&Record { node_id, events }).map_err(|e| {
        let number = event_lines.get(e.index).copied().unwrap_or_default();
        anyhow!("line {number}: {}", e.kind)
    })?;
    writeln!(out, "{}", hex::encode(bytes))?;
    out.flush()?;
    Ok(())
}

/// Hex digits, with any whitespace between them ignored so that a record
/// pasted from a document or a log with spaces in it reads as is.
fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = text.split_whitespace().collect();
    hex::decode(&digits).map_err(|e| anyhow!("the record is not hex ({e}, whitespace removed)"))
}

fn parse_node_line(line: &str) -> Result<u16, String> {
    serde_json::from_str::<NodeLine>(line)
        .map(|l| l.node_id)
        .map_err(|e| format!(r#"expected {{"nodeId":N}} with N from 0 to 65535: {e}"#))
}

fn parse_event_line(line: &str) -> Result<Body, String> {
    let event: EventLineIn = serde_json::from_str(line)
        .map_err(|e| format!(r#"expected {{"kind":"…","body":{{…}}}}: {e}"#))?;
    let body = if event.body.is_null() {
        Value::Object(Default::default())
    } else {
        event.body
    };
    Body::from_json(&event.kind, body)
}

fn write_line(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "01 00ac021905 0702 0007 0a02f8acd19101 04 11 94b4e4f4cb03 0c";

    fn decode_to_string(hex: Option<&str>, stdin: &[u8]) -> (String, anyhow::Result<()>) {
        let mut out = Vec::new();
        let result = decode_cmd(hex, &mut &stdin[..], &mut out);
        (String::from_utf8(out).unwrap(), result)
    }

    fn encode_to_string(lines: &str) -> anyhow::Result<String> {
        let mut out = Vec::new();
        encode_cmd(&mut lines.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn json_lines(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn design_example_round_trips_through_both_commands() {
        let (lines, result) = decode_to_string(Some(EXAMPLE), b"");
        result.unwrap();
        let expected = [
            r#"{"nodeId":1}"#,
            r#"{"kind":"state-change","body":{"accountId":5,"changeId":300,"types":["Email","Mailbox","Thread"]}}"#,
            r#"{"kind":"cache-invalidate","body":{"items":[{"cache":"access-token","id":7},{"cache":"email-negative","domainId":2,"hash":305419896}]}}"#,
            r#"{"kind":"registry-change","body":{"action":"insert","objectType":17,"id":123456789012}}"#,
            r#"{"kind":"queue-refresh","body":{}}"#,
        ];
        assert_eq!(json_lines(&lines), json_lines(&expected.join("\n")));
        assert!(lines.lines().skip(1).all(|l| l.starts_with(r#"{"kind":"#)));

        let hex = encode_to_string(&lines).unwrap();
        let compact: String = EXAMPLE.split_whitespace().collect();
        assert_eq!(hex, format!("{compact}\n"));
    }

    #[test]
    fn raw_bytes_on_stdin() {
        let raw = hex::decode("0000031901").unwrap();
        let (lines, result) = decode_to_string(None, &raw);
        result.unwrap();
        assert_eq!(lines.lines().count(), 2);
        assert_eq!(encode_to_string(&lines).unwrap(), "0000031901\n");
    }

    #[test]
    fn a_fault_after_events_prints_them_and_names_the_byte() {
        let (lines, result) = decode_to_string(Some("00 0c 03 ffffffff10"), b"");
        assert_eq!(lines.lines().count(), 2, "{lines}");
        let message = result.unwrap_err().to_string();
        assert!(message.contains("byte 3"), "{message}");
        assert!(message.contains("account id"), "{message}");
    }

    #[test]
    fn unreadable_records_fail_without_output() {
        let (lines, result) = decode_to_string(Some(""), b"");
        assert_eq!(lines, "");
        assert!(result.unwrap_err().to_string().contains("byte 0"));
        let (_, result) = decode_to_string(Some("0x"), b"");
        assert!(result.unwrap_err().to_string().contains("not hex"));
    }

    #[test]
    fn blank_lines_are_ignored_and_bodies_may_be_left_out() {
        let input = "\n{\"nodeId\":2}\n\n{\"kind\":\"queue-refresh\"}\n  \n";
        assert_eq!(encode_to_string(input).unwrap(), "020c\n");
    }

    #[test]
    fn encode_errors_name_the_line() {
        let e = encode_to_string("{\"nodeId\":2}\n\n{\"kind\":\"settings-reload\",\"body\":{}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 3:") && e.contains("settings-reload"),
            "{e}"
        );

        let e = encode_to_string("{\"nodeId\":70000}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1:"), "{e}");

        let e = encode_to_string("{\"nodeId\":1}\n{\"kind\":\"queue-status\",\"body\":{}}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2:") && e.contains("running"), "{e}");

        let e = encode_to_string("").unwrap_err().to_string();
        assert!(e.contains("nodeId"), "{e}");
    }
}
