//! Decoder and encoder against real samples, hand-made faults and
//! round-trip properties.

use super::*;
use proptest::prelude::*;

fn bytes(hex_with_spaces: &str) -> Vec<u8> {
    let compact: String = hex_with_spaces.split_whitespace().collect();
    hex::decode(compact).expect("test hex")
}

/// Decode, insist the record is whole, and check it re-encodes to the
/// same bytes.
fn decode_whole(hex: &str) -> Decoded {
    let raw = bytes(hex);
    let decoded = decode(&raw).expect("node id");
    assert_eq!(decoded.error, None, "{hex}");
    let record = Record {
        node_id: decoded.node_id,
        events: decoded.events.clone(),
    };
    assert_eq!(encode(&record).unwrap(), raw, "re-encoding {hex}");
    decoded
}

/// Decode a record that must end in a fault: the events before it and the
/// fault.
fn decode_faulty(hex: &str) -> (Vec<Body>, DecodeError) {
    let decoded = decode(&bytes(hex)).expect("node id");
    let error = decoded.error.expect("a fault");
    (decoded.events, error)
}

fn state_change(account_id: u32, change_id: u64, types: &[&str]) -> Body {
    Body::StateChange(StateChange {
        account_id,
        change_id,
        types: DataTypes::from_names(types.iter().copied()).unwrap(),
    })
}

fn registry(action: RegistryAction, object_type: u16, id: Option<u64>) -> Body {
    Body::RegistryChange(RegistryChange {
        action,
        object_type,
        id,
    })
}

fn err(offset: usize, kind: DecodeErrorKind) -> DecodeError {
    DecodeError { offset, kind }
}

#[test]
fn design_example() {
    let d = decode_whole("01 00ac021905 0702 0007 0a02f8acd19101 04 11 94b4e4f4cb03 0c");
    assert_eq!(d.node_id, 1);
    assert_eq!(
        d.events,
        vec![
            state_change(5, 300, &["Email", "Mailbox", "Thread"]),
            Body::CacheInvalidate(CacheInvalidate {
                items: vec![
                    CacheItem::AccessToken(7),
                    CacheItem::EmailNegative {
                        domain_id: 2,
                        hash: 0x12345678
                    },
                ]
            }),
            registry(RegistryAction::Insert, 17, Some(123456789012)),
            Body::QueueRefresh(Empty {}),
        ]
    );
}

#[test]
fn real_sample_jmap_email_set() {
    let d = decode_whole("0000031901");
    assert_eq!(d.node_id, 0);
    assert_eq!(
        d.events,
        vec![state_change(1, 3, &["Email", "Mailbox", "Thread"])]
    );
}

#[test]
fn real_sample_account_created() {
    let d = decode_whole("0007010a01f6bb81ef0f");
    assert_eq!(d.node_id, 0);
    assert_eq!(
        d.events,
        vec![Body::CacheInvalidate(CacheInvalidate {
            items: vec![CacheItem::EmailNegative {
                domain_id: 1,
                hash: 4259339766
            }]
        })]
    );
}

#[test]
fn real_sample_calendar_alert() {
    let d = decode_whole("0001010100187665632d616c61726d2d31406578616d706c652e74657374026b31");
    assert_eq!(d.node_id, 0);
    assert_eq!(
        d.events,
        vec![Body::CalendarAlert(CalendarAlert {
            account_id: 1,
            event_id: 1,
            recurrence_id: None,
            uid: "vec-alarm-1@example.test".into(),
            alert_id: "k1".into(),
        })]
    );
}

#[test]
fn real_sample_automatic_ban() {
    let d = decode_whole("00041180a080b7fccae3e004");
    assert_eq!(d.node_id, 0);
    assert_eq!(
        d.events,
        vec![registry(
            RegistryAction::Insert,
            17,
            Some(342711554306740224)
        )]
    );
}

#[test]
fn every_tag_decodes() {
    let d = decode_whole("07 02020304 0304 040405 050506 0607 0700 08 09 0a 0b 0c");
    assert_eq!(d.node_id, 7);
    assert_eq!(
        d.events,
        vec![
            Body::EmailPush(EmailPush {
                account_id: 2,
                email_id: 3,
                change_id: 4
            }),
            Body::PushServerUpdate(PushServerUpdate { account_id: 4 }),
            registry(RegistryAction::Insert, 4, Some(5)),
            registry(RegistryAction::Delete, 5, Some(6)),
            registry(RegistryAction::Reload, 7, None),
            Body::CacheInvalidate(CacheInvalidate { items: vec![] }),
            cache_invalidate_all(CacheScope::All),
            cache_invalidate_all(CacheScope::Negative),
            Body::QueueStatus(QueueStatus { running: true }),
            Body::QueueStatus(QueueStatus { running: false }),
            Body::QueueRefresh(Empty {}),
        ]
    );
}

#[test]
fn domain_negative_keeps_its_value() {
    // Stalwart writes 0 after marker 11; any other value survives too.
    let d = decode_whole("00 07 02 0b00 0b05");
    assert_eq!(
        d.events,
        vec![Body::CacheInvalidate(CacheInvalidate {
            items: vec![CacheItem::DomainNegative(0), CacheItem::DomainNegative(5)]
        })]
    );
}

#[test]
fn limits_decode() {
    // u16::MAX node id, u32::MAX account, u64::MAX change id and types.
    let d = decode_whole("ffff03 00 ffffffffffffffffff01 ffffffffffffffffff01 ffffffff0f");
    assert_eq!(d.node_id, u16::MAX);
    assert_eq!(
        d.events,
        vec![Body::StateChange(StateChange {
            account_id: u32::MAX,
            change_id: u64::MAX,
            types: DataTypes(u64::MAX),
        })]
    );
}

#[test]
fn overlong_integers_are_accepted_and_re_encoded_short() {
    let d = decode(&bytes("8000 03 80808080 00")).unwrap();
    assert_eq!(d.error, None);
    assert_eq!(d.node_id, 0);
    assert_eq!(
        d.events,
        vec![Body::PushServerUpdate(PushServerUpdate { account_id: 0 })]
    );
    let again = encode(&Record {
        node_id: d.node_id,
        events: d.events,
    });
    assert_eq!(again.unwrap(), bytes("00 03 00"));
}

#[test]
fn node_id_overflow() {
    // 65536 needs 17 bits.
    let e = decode(&bytes("808004 0c")).unwrap_err();
    assert_eq!(
        e,
        err(
            0,
            DecodeErrorKind::Overflow {
                field: "node id",
                ty: "u16"
            }
        )
    );
    assert_eq!(e.to_string(), "byte 0: node id does not fit in a u16");
    // A fourth byte is past a u16's budget even if the value is small.
    assert!(decode(&bytes("80808000")).is_err());
}

#[test]
fn node_id_truncated() {
    let e = decode(&bytes("80")).unwrap_err();
    assert_eq!(e, err(0, DecodeErrorKind::Truncated { field: "node id" }));
}

#[test]
fn empty_input() {
    let e = decode(&[]).unwrap_err();
    assert_eq!(e, err(0, DecodeErrorKind::Empty));
    assert_eq!(e.to_string(), "byte 0: empty record: no node id");
}

#[test]
fn u32_overflow() {
    // Queue refresh, then a push server update whose account id has bit 32.
    let (events, e) = decode_faulty("00 0c 03 ffffffff10");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    let overflow = DecodeErrorKind::Overflow {
        field: "account id",
        ty: "u32",
    };
    assert_eq!(e, err(3, overflow.clone()));
    // Six bytes for a u32 overflow even when the value would be 0.
    let (events, e) = decode_faulty("00 0c 03 808080808000");
    assert_eq!(events.len(), 1);
    assert_eq!(e, err(3, overflow));
}

#[test]
fn u64_overflow() {
    let overflow = DecodeErrorKind::Overflow {
        field: "change id",
        ty: "u64",
    };
    // The tenth byte may only carry bit 63.
    let (events, e) = decode_faulty("00 08 00 ffffffffffffffffff02 00 00");
    assert_eq!(events, vec![cache_invalidate_all(CacheScope::All)]);
    assert_eq!(e, err(3, overflow.clone()));
    // Eleven bytes.
    let (events, e) = decode_faulty("00 08 00 8080808080808080808000 00 00");
    assert_eq!(events.len(), 1);
    assert_eq!(e, err(3, overflow));
}

#[test]
fn truncated_inside_a_leb128() {
    let (events, e) = decode_faulty("00 0a 02 80");
    assert_eq!(
        events,
        vec![Body::QueueStatus(QueueStatus { running: true })]
    );
    assert_eq!(
        e,
        err(
            3,
            DecodeErrorKind::Truncated {
                field: "account id"
            }
        )
    );
    assert_eq!(
        e.to_string(),
        "byte 3: the record ends before the end of the account id"
    );
}

#[test]
fn truncated_missing_field() {
    let (events, e) = decode_faulty("00 0b 04 11");
    assert_eq!(
        events,
        vec![Body::QueueStatus(QueueStatus { running: false })]
    );
    assert_eq!(e, err(4, DecodeErrorKind::Truncated { field: "object id" }));
    // A cache invalidation whose second item ends after its marker.
    let (events, e) = decode_faulty("00 0c 07 02 0007 00");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    assert_eq!(e, err(7, DecodeErrorKind::Truncated { field: "cache id" }));
}

#[test]
fn string_length_past_end() {
    let (events, e) = decode_faulty("00 09 01 01 01 00 18 76");
    assert_eq!(events, vec![cache_invalidate_all(CacheScope::Negative)]);
    assert_eq!(
        e,
        err(
            6,
            DecodeErrorKind::LengthPastEnd {
                field: "uid length",
                len: 24,
                remaining: 1
            }
        )
    );
    assert_eq!(
        e.to_string(),
        "byte 6: uid length 24 runs past the end of the record (1 bytes left)"
    );
}

#[test]
fn absurd_cache_count_is_refused_without_allocating() {
    let (events, e) = decode_faulty("00 0c 07 ffffffffffffffffff01");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    assert_eq!(
        e,
        err(
            3,
            DecodeErrorKind::LengthPastEnd {
                field: "cache item count",
                len: u64::MAX,
                remaining: 0
            }
        )
    );
}

#[test]
fn invalid_utf8() {
    // uid "a" followed by a broken two-byte sequence; the offset is the
    // first bad byte.
    let (events, e) = decode_faulty("00 0c 01 01 01 00 03 61c328 00");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    assert_eq!(e, err(8, DecodeErrorKind::InvalidUtf8 { field: "uid" }));
    let (_, e) = decode_faulty("00 01 01 01 00 00 01 ff");
    assert_eq!(
        e,
        err(7, DecodeErrorKind::InvalidUtf8 { field: "alert id" })
    );
}

#[test]
fn unknown_tag_ends_the_record() {
    // Tag 13 is not in v0.16; the queue refresh after it is lost.
    let (events, e) = decode_faulty("00 0c 0d 0c");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    assert_eq!(e, err(2, DecodeErrorKind::UnknownTag(13)));
    assert!(e.to_string().starts_with("byte 2: unknown event tag 13"));
}

#[test]
fn unknown_cache_marker() {
    // The whole cache invalidation goes, its good first item included.
    let (events, e) = decode_faulty("00 0c 07 02 0007 0c05");
    assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
    assert_eq!(e, err(6, DecodeErrorKind::UnknownCacheMarker(12)));
    // A marker ≥ 128 is one raw byte, not the start of a LEB128.
    let (_, e) = decode_faulty("00 07 01 8000");
    assert_eq!(e, err(3, DecodeErrorKind::UnknownCacheMarker(0x80)));
}

#[test]
fn kinds_without_a_wire_form_are_refused() {
    let record = Record {
        node_id: 1,
        events: vec![Body::QueueRefresh(Empty {}), Body::SettingsReload(Empty {})],
    };
    let e = encode(&record).unwrap_err();
    assert_eq!(e.index, 1);
    assert_eq!(e.kind, EncodeErrorKind::NoWireForm("settings-reload"));
    assert_eq!(
        e.to_string(),
        "event 1: kind `settings-reload` has no Stalwart v0.16 form"
    );
    assert!(!has_wire_form(&Body::SettingsReload(Empty {})));
}

#[test]
fn values_without_a_wire_form_are_refused() {
    let alert = Body::CalendarAlert(CalendarAlert {
        account_id: 1,
        event_id: 2,
        recurrence_id: Some(0),
        uid: "u".into(),
        alert_id: "a".into(),
    });
    let cases = [
        (alert, EncodeErrorKind::ZeroRecurrence),
        (
            registry(RegistryAction::Insert, 17, None),
            EncodeErrorKind::MissingRegistryId { action: "insert" },
        ),
        (
            registry(RegistryAction::Delete, 17, None),
            EncodeErrorKind::MissingRegistryId { action: "delete" },
        ),
        (
            registry(RegistryAction::Reload, 17, Some(3)),
            EncodeErrorKind::RegistryReloadWithId(3),
        ),
    ];
    for (body, kind) in cases {
        assert!(!has_wire_form(&body), "{body:?}");
        let e = encode_batches(0, &[body]).unwrap_err();
        assert_eq!(e, EncodeError { index: 0, kind });
    }
}

#[test]
fn batches_hold_at_most_100_events() {
    let events: Vec<Body> = (0..250)
        .map(|i| Body::PushServerUpdate(PushServerUpdate { account_id: i }))
        .collect();
    let records = encode_batches(3, &events).unwrap();
    let counts: Vec<usize> = records
        .iter()
        .map(|r| {
            let d = decode(r).unwrap();
            assert_eq!((d.node_id, &d.error), (3, &None));
            d.events.len()
        })
        .collect();
    assert_eq!(counts, [100, 100, 50]);
    let back: Vec<Body> = records
        .iter()
        .flat_map(|r| decode(r).unwrap().events)
        .collect();
    assert_eq!(back, events);
    assert!(encode_batches(3, &[]).unwrap().is_empty());
}

#[test]
fn batch_errors_count_from_the_first_event() {
    let mut events = vec![Body::QueueRefresh(Empty {}); 150];
    events[120] = Body::SettingsReload(Empty {});
    assert_eq!(encode_batches(0, &events).unwrap_err().index, 120);
}

// ------------------------------------------------------------ proptests

fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(127),
        Just(128),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(127),
        Just(128),
        Just(u32::MAX),
        any::<u32>()
    ]
}

fn any_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(1),
        Just(127),
        Just(128),
        Just(u16::MAX),
        any::<u16>()
    ]
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{0,40}",
        // Long and multi-byte: 1000 chars of 1- to 4-byte UTF-8.
        "[aé€😀]{1000}",
    ]
}

fn any_recurrence() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        Just(None),
        Just(Some(i64::MIN)),
        Just(Some(-1)),
        Just(Some(1)),
        Just(Some(i64::MAX)),
        any::<i64>().prop_map(|v| (v != 0).then_some(v)),
    ]
}

fn any_cache_item() -> impl Strategy<Value = CacheItem> {
    (0u8..12, any_u32(), any_u32()).prop_map(|(marker, a, b)| {
        CacheItem::from_marker(marker, a).unwrap_or(CacheItem::EmailNegative {
            domain_id: a,
            hash: b,
        })
    })
}

/// Every body with a v0.16 form, across its whole value range.
fn any_wire_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any_u32(), any_u64(), any_u64()).prop_map(|(account_id, change_id, types)| {
            Body::StateChange(StateChange {
                account_id,
                change_id,
                types: DataTypes(types),
            })
        }),
        (
            any_u32(),
            any_u32(),
            any_recurrence(),
            any_string(),
            any_string()
        )
            .prop_map(|(account_id, event_id, recurrence_id, uid, alert_id)| {
                Body::CalendarAlert(CalendarAlert {
                    account_id,
                    event_id,
                    recurrence_id,
                    uid,
                    alert_id,
                })
            }),
        (any_u32(), any_u32(), any_u64()).prop_map(|(account_id, email_id, change_id)| {
            Body::EmailPush(EmailPush {
                account_id,
                email_id,
                change_id,
            })
        }),
        any_u32().prop_map(|account_id| Body::PushServerUpdate(PushServerUpdate { account_id })),
        (any::<bool>(), any_u16(), any_u64()).prop_map(|(insert, object_type, id)| {
            let action = if insert {
                RegistryAction::Insert
            } else {
                RegistryAction::Delete
            };
            registry(action, object_type, Some(id))
        }),
        any_u16().prop_map(|t| registry(RegistryAction::Reload, t, None)),
        prop::collection::vec(any_cache_item(), 0..20)
            .prop_map(|items| Body::CacheInvalidate(CacheInvalidate { items })),
        Just(cache_invalidate_all(CacheScope::All)),
        Just(cache_invalidate_all(CacheScope::Negative)),
        any::<bool>().prop_map(|running| Body::QueueStatus(QueueStatus { running })),
        Just(Body::QueueRefresh(Empty {})),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        node_id in any_u16(),
        events in prop::collection::vec(any_wire_body(), 0..30),
    ) {
        prop_assert!(events.iter().all(has_wire_form));
        let record = Record { node_id, events };
        let raw = encode(&record).unwrap();
        let decoded = decode(&raw).unwrap();
        prop_assert_eq!(decoded.error, None);
        prop_assert_eq!(decoded.node_id, record.node_id);
        prop_assert_eq!(decoded.events, record.events);
    }

    /// The fuzz target's property, run on every `cargo test` too.
    #[test]
    fn decoding_arbitrary_bytes_is_total_and_consistent(
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Ok(d) = decode(&raw) {
            let Decoded { node_id, events, error } = d;
            if error.is_none() {
                let again = encode(&Record { node_id, events: events.clone() }).unwrap();
                // Only over-long LEB128s make the input longer than its
                // canonical form.
                prop_assert!(again == raw || again.len() < raw.len());
                let d2 = decode(&again).unwrap();
                prop_assert_eq!((d2.node_id, d2.events, d2.error), (node_id, events, None));
            }
        }
    }
}

#[test]
fn a_cache_list_too_long_for_one_event_invalidates_everything() {
    let long = Body::CacheInvalidate(CacheInvalidate {
        items: (0..read::MAX_CACHE_ITEMS as u32 + 1)
            .map(|id| CacheItem::from_marker(1, id).unwrap())
            .collect(),
    });
    let after = Body::CacheInvalidate(CacheInvalidate {
        items: vec![CacheItem::from_marker(1, 7).unwrap()],
    });
    let raw = encode(&Record {
        node_id: 3,
        events: vec![long, after.clone()],
    })
    .unwrap();
    let d = decode(&raw).unwrap();
    assert_eq!(d.error, None);
    // Folded into one small event, and the record's next event still read.
    assert_eq!(d.events, vec![cache_invalidate_all(CacheScope::All), after]);
}
