//! push: delivers Web Push messages, once per cluster (shared mode).
//!
//! The event is passed on as it is: the node encrypts the payload for the
//! subscription's keys (RFC 8291), signs the request with its VAPID key
//! (RFC 8292) and sends the `Topic`; without keys it sends a message with
//! no payload. Keys or a topic the node cannot use (malformed, a payload too
//! large to encrypt) are `invalid`: the event is rejected.
//!
//! The node queues the message and delivers it off the partition (its push
//! outbox retries 429, 5xx and network errors, and publishes that a
//! subscription is gone on 404/410), so `deliver_push` answers at once: a
//! transient error (the outbox is full) asks herald to retry the event.

use herald_guest::{
    EffectError, Event, Handled, Handler, Host, Level, Push, PushMessage, reject, retry,
};

pub struct WebPush;

impl Handler for WebPush {
    fn push(host: &impl Host, event: &Event, push: &Push) -> Handled {
        let message = PushMessage {
            account_id: push.account_id,
            endpoint: push.endpoint.clone(),
            payload: push.payload.clone(),
            ttl: push.ttl,
            urgency: push.urgency,
            keys: push.keys.clone(),
            topic: push.topic.clone(),
        };
        // By class, but not through `?`: gone is the normal end of a
        // subscription, and the reasons stay the push service's own words.
        match host.deliver_push(&event.id, &message) {
            Ok(()) => Ok(()),
            Err(EffectError::Transient(why)) => retry(why),
            Err(EffectError::Gone(why)) => {
                let msg = format!("account {}: subscription gone: {why}", push.account_id);
                host.log(Level::Info, &msg);
                Ok(())
            }
            Err(EffectError::Invalid(why) | EffectError::Denied(why)) => reject(why),
        }
    }
}

herald_guest::export!(WebPush);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_guest::testing::{self, Effect, RecordingHost};
    use herald_guest::{Outcome, PushKeys};

    fn run(host: &RecordingHost) -> Outcome {
        let ev = testing::push(5, "https://push.example/sub/abc", "hello");
        herald_guest::handle::<WebPush>(host, &[ev]).remove(0)
    }

    #[test]
    fn delivers_with_the_event_id() {
        let host = RecordingHost::new();
        assert_eq!(run(&host), Outcome::Ok);
        match &host.effects()[..] {
            [Effect::DeliverPush { event_id, message }] => {
                assert_eq!(event_id, "test-event");
                assert_eq!(message.endpoint, "https://push.example/sub/abc");
                assert_eq!(message.payload, "hello");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn passes_keys_and_topic_on() {
        let host = RecordingHost::new();
        let mut ev = testing::push(5, "https://push.example/sub/abc", "hello");
        let keys = PushKeys {
            p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4".into(),
            auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
        };
        if let herald_guest::Body::Push(p) = &mut ev.body {
            p.keys = Some(keys.clone());
            p.topic = Some("inbox".into());
        }
        assert_eq!(
            herald_guest::handle::<WebPush>(&host, &[ev]).remove(0),
            Outcome::Ok
        );
        match &host.effects()[..] {
            [Effect::DeliverPush { message, .. }] => {
                assert_eq!(message.keys, Some(keys));
                assert_eq!(message.topic.as_deref(), Some("inbox"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_failure_retries() {
        let host = RecordingHost::new().fail_push(EffectError::Transient("503".into()));
        assert_eq!(run(&host), Outcome::Retry("503".into()));
    }

    #[test]
    fn gone_is_done_and_invalid_or_denied_is_rejected() {
        let host = RecordingHost::new().fail_push(EffectError::Gone("410".into()));
        assert_eq!(run(&host), Outcome::Ok);
        assert_eq!(host.logs().len(), 1);
        let host = RecordingHost::new().fail_push(EffectError::Invalid("400".into()));
        assert_eq!(run(&host), Outcome::Reject("400".into()));
        let host = RecordingHost::new().fail_push(EffectError::Denied("policy".into()));
        assert_eq!(run(&host), Outcome::Reject("policy".into()));
    }
}
