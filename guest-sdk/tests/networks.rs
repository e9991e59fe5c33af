//! The networks every SDK must read alike. `networks.jsonl` holds inputs and
//! what this SDK's `net` makes of them: the canonical text, the display, the
//! loopback check and which of [`REFERENCE`] each overlaps (the file's first
//! line lists them, for the other SDKs' tests), or the error. The
//! Python and JavaScript SDKs' tests read the same file and must give the
//! same answers, so a handler ported from Rust gives the same outcomes.
//!
//! `HERALD_BLESS=1 cargo test -p herald-guest --test networks` writes the
//! file anew (the inputs below, then this SDK's answers).

use herald_guest::net::{Allowlist, canonical, overlaps, parse_network, touches_loopback};
use serde_json::{Value, json};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/networks.jsonl");

/// Networks each valid input is checked against with `overlaps`.
const REFERENCE: [&str; 8] = [
    "10.0.0.0/8",
    "192.0.2.0/24",
    "0.0.0.0/0",
    "::/0",
    "2001:db8::/32",
    "64:ff9b::/96",
    "fe80::/10",
    "203.0.113.7",
];

/// Inputs chosen by hand: the spellings the parsers differ on.
const CHOSEN: &[&str] = &[
    "203.0.113.7",
    "0.0.0.0",
    "255.255.255.255",
    "256.0.0.1",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.",
    ".1.2.3.4",
    "1..2.3",
    "1.2.3.4/8",
    "1.2.3.0/24",
    "1.2.3.0/024",
    "01.2.3.4/32",
    "001.002.003.004/32",
    "0001.2.3.4/32",
    "1.2.3.4/32",
    "1.2.3.4/33",
    "1.2.3.4/",
    "/24",
    "1.2.3.4/3x",
    "1.2.3.4/+8",
    "1.2.3.4/255.255.255.0",
    "10.0.0.1/8",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "127.0.0.1",
    "127.8.0.0/16",
    "126.0.0.0/7",
    " 203.0.113.7 ",
    "\t203.0.113.7\n",
    "\u{a0}203.0.113.7\u{3000}",
    "\u{1c}203.0.113.7",
    "203.0.113.7\u{85}",
    "",
    "   ",
    "not-an-ip",
    "::",
    "::1",
    "::1/128",
    "::/0",
    "::/128",
    "1::",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4::5:6:7:8",
    "1:2:3:4::5:6:7:8/128",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    ":1::2",
    "1::2:",
    "12345::",
    "0001:0002::",
    "2001:DB8::/48",
    "2001:db8::/48",
    "2001:db8::1/48",
    "2001:0db8:0000:0000:0000:0000:0000:0001",
    "2001:db8:0:0:1:0:0:1",
    "2001:db8::1:0:0:1",
    "2001:0:0:1::1",
    "fe80::1%eth0",
    "fe80::1%1",
    "[::1]",
    "::ffff:192.0.2.1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:192.0.2.0/120",
    "::ffff:192.0.2.1/100",
    "::ffff:0.0.0.0/96",
    "::ffff:0:0/95",
    "::fffe:0:0/95",
    "::ffff:01.2.3.4",
    "::ffff:01.2.3.4/128",
    "::1.2.3.4",
    "::1.2.3.4/128",
    "1.2.3.4::",
    "64:ff9b::192.0.2.1",
    "64:ff9b::/96",
    "2002:c000:200::/40",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5:6:7:1.2.3.4",
    "::/129",
    "::/0128",
    "::/064",
    "2001:db8::/32 ",
    "2001:db8:: /32",
    "1.2.3.4 /8",
    "1.2.3.4/ 8",
    "１.2.3.4",
    "1.2.3.4\u{0}",
];

/// The same xorshift sequence on every run: strings of address characters,
/// and valid addresses with one character changed.
fn generated() -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const ALPHABET: &[u8] = b"0123456789abcdefABCDEF...:::///0 xf";
    let mut inputs = Vec::new();
    for _ in 0..1500 {
        let r = next();
        let len = 1 + (r % 24) as usize;
        let text: String = (0..len)
            .map(|i| ALPHABET[((r >> (i % 8 * 8)) ^ next()) as usize % ALPHABET.len()] as char)
            .collect();
        inputs.push(text);
    }
    for i in 0..1500u32 {
        let r = next();
        let base = match r % 4 {
            0 => format!(
                "{}.{}.{}.{}",
                r >> 8 & 255,
                r >> 16 & 255,
                r >> 24 & 255,
                i & 255
            ),
            1 => format!("{}.{}.0.0/{}", r >> 8 & 255, r >> 16 & 255, r >> 24 & 31),
            2 => format!("2001:db8:{:x}::{:x}", r >> 8 & 0xffff, i),
            _ => format!(
                "{:x}:{:x}::/{}",
                r >> 8 & 0xffff,
                r >> 24 & 0xffff,
                r >> 40 & 127
            ),
        };
        let mut bytes = base.into_bytes();
        if r >> 50 & 1 == 1 {
            let at = (r >> 51) as usize % bytes.len();
            bytes[at] = ALPHABET[(r >> 56) as usize % ALPHABET.len()];
        }
        inputs.push(String::from_utf8(bytes).expect("ASCII"));
    }
    inputs
}

/// Allowlist settings, and what they read as.
const ALLOWLISTS: &[&str] = &[
    "",
    "10.0.0.0/8, 2001:db8::1  192.0.2.1",
    "10.0.0.0/8,,\t::ffff:10.0.0.1\u{2003}fe80::/10",
    "10.0.0.0/8, bogus",
    "10.0.0.1/8",
    "192.0.2.0/24;198.51.100.0/24",
];

fn answer(input: &str) -> Value {
    match parse_network(input) {
        Ok(net) => {
            let hits: String = REFERENCE
                .iter()
                .map(
                    |r| match overlaps(&net, &parse_network(r).expect("reference")) {
                        true => '1',
                        false => '0',
                    },
                )
                .collect();
            json!({
                "input": input,
                "canonical": canonical(&net),
                "display": net.to_string(),
                "loopback": touches_loopback(&net),
                "overlaps": hits,
            })
        }
        Err(e) => json!({"input": input, "error": e}),
    }
}

fn allowlist(setting: &str) -> Value {
    match Allowlist::parse(setting) {
        Ok(list) => json!({
            "allowlist": setting,
            "networks": list.0.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        }),
        Err(e) => json!({"allowlist": setting, "error": e}),
    }
}

#[test]
fn every_sdk_reads_these_networks_as_rust_does() {
    if std::env::var_os("HERALD_BLESS").is_some() {
        let mut lines = vec![json!({ "reference": REFERENCE }).to_string()];
        lines.extend(
            CHOSEN
                .iter()
                .map(|s| s.to_string())
                .chain(generated())
                .map(|i| answer(&i).to_string()),
        );
        lines.extend(ALLOWLISTS.iter().map(|s| allowlist(s).to_string()));
        std::fs::write(FILE, lines.join("\n") + "\n").unwrap();
    }
    let text = std::fs::read_to_string(FILE).unwrap();
    let mut lines = text.lines();
    let first: Value = serde_json::from_str(lines.next().unwrap_or_default()).unwrap();
    assert_eq!(
        first,
        json!({ "reference": REFERENCE }),
        "{FILE}: the first line"
    );
    let mut checked = 0;
    for line in lines {
        let want: Value = serde_json::from_str(line).unwrap();
        let got = match (want.get("input"), want.get("allowlist")) {
            (Some(Value::String(input)), _) => answer(input),
            (_, Some(Value::String(setting))) => allowlist(setting),
            _ => panic!("{FILE}: a line with neither input nor allowlist: {line}"),
        };
        assert_eq!(got, want, "{FILE}: {line}");
        checked += 1;
    }
    // The file is not a stub: both answers are covered many times over.
    let valid = text.matches("\"canonical\"").count();
    assert!(
        valid > 500 && checked - valid > 500,
        "{valid} valid of {checked}"
    );
}
