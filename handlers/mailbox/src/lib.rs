//! mailbox: wakes the IMAP IDLE and JMAP EventSource sessions of an account
//! when a state change touches mail (Email, EmailDelivery or Mailbox).

use herald_guest::{DataTypes, Event, Handled, Handler, Host, StateChange};

pub struct Mailbox;

/// Changes an IDLE session must hear about; others (Thread alone, Identity,
/// Calendar, ...) do not change what an IMAP client sees.
const WAKES_IDLE: DataTypes = DataTypes::EMAIL
    .union(DataTypes::EMAIL_DELIVERY)
    .union(DataTypes::MAILBOX);

impl Handler for Mailbox {
    fn state_change(host: &impl Host, _: &Event, change: &StateChange) -> Handled {
        if change.types.intersects(WAKES_IDLE) {
            host.notify_idle(change.account_id, change.change_id, change.types);
        }
        Ok(())
    }
}

herald_guest::export!(Mailbox);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_guest::Outcome;
    use herald_guest::testing::{self, Effect, RecordingHost};

    #[test]
    fn mail_changes_wake_idle() {
        let host = RecordingHost::new();
        let types = DataTypes::EMAIL | DataTypes::THREAD;
        let out = herald_guest::handle::<Mailbox>(&host, &[testing::state_change(5, 300, types)]);
        assert_eq!(out, vec![Outcome::Ok]);
        assert_eq!(
            host.effects(),
            vec![Effect::NotifyIdle {
                account_id: 5,
                change_id: 300,
                types
            }]
        );
    }

    #[test]
    fn other_changes_do_not() {
        let host = RecordingHost::new();
        let events = [
            testing::state_change(5, 301, DataTypes::THREAD | DataTypes::IDENTITY),
            testing::ip_block("203.0.113.7"),
        ];
        let out = herald_guest::handle::<Mailbox>(&host, &events);
        assert_eq!(out, vec![Outcome::Ok, Outcome::Ok]);
        assert!(host.effects().is_empty());
    }
}
