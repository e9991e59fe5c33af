//! push: delivers Web Push messages, once per cluster (shared mode).
//!
//! A transient failure (network, 429, 5xx) asks herald to retry the event;
//! a subscription that is gone (404/410) is not an error of the event: the
//! node has already published that the subscription is gone.

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
    use herald_guest::Outcome;
    use herald_guest::testing::{self, Effect, RecordingHost};

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
