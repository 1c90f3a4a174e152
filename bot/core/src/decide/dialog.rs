//! Dialog queueing: questions to one person in one private room are asked one at a time.
//! A question that finds another run's question waiting there queues behind it (the person
//! is told it will follow); when a wait there ends, the next in line is asked.
//!
//! A queued wait has not started: an answer typed before its question was sent is not an
//! answer to it (the runtime compares the time it was said with the wait's start).

use crate::Millis;

/// A run's wait on a person in a room, as the queue sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting<'a> {
    pub run: &'a str,
    /// When its question was sent (`None`: queued, not asked yet).
    pub since: Option<Millis>,
}

/// Whether a question is asked now or queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asking {
    Now,
    /// Another run's question waits there: asked when that one is answered or ends.
    Queued,
}

impl Asking {
    /// When the wait for its answer starts, if it starts now.
    pub fn since(self, now: Millis) -> Option<Millis> {
        match self {
            Asking::Now => Some(now),
            Asking::Queued => None,
        }
    }
}

/// Whether a question to a person in a room is asked now: yes, unless another run's
/// question (`other_waiting`, the first other run found waiting there) is ahead of it.
pub fn ask(other_waiting: Option<&str>) -> Asking {
    match other_waiting {
        None => Asking::Now,
        Some(_) => Asking::Queued,
    }
}

/// The question asked when a wait on a person in a room has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextQuestion<'a> {
    pub run: &'a str,
    /// When its wait starts, if that is now (it was queued).
    pub starts: Option<Millis>,
}

/// When a wait on a person in a room has ended, the first still in line there (`first`,
/// the oldest wait) is asked: its question goes out (under its own key, so one sent
/// before is not sent twice), and its wait starts now unless it had started.
pub fn next_in_line<'a>(first: Option<&Waiting<'a>>, now: Millis) -> Option<NextQuestion<'a>> {
    first.map(|w| NextQuestion { run: w.run, starts: if w.since.is_some() { None } else { Some(now) } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_waits_behind_another_runs_question_in_the_same_room() {
        assert_eq!(ask(None), Asking::Now);
        assert_eq!(ask(Some("R-1")), Asking::Queued);
        assert_eq!(Asking::Now.since(Millis(5)), Some(Millis(5)));
        assert_eq!(Asking::Queued.since(Millis(5)), None, "a queued wait has not started");
    }

    #[test]
    fn the_next_in_line_is_asked_and_its_wait_starts_then_unless_it_had() {
        let now = Millis(9_000);
        assert_eq!(next_in_line(None, now), None, "nobody in line");
        let queued = Waiting { run: "R-2", since: None };
        assert_eq!(next_in_line(Some(&queued), now), Some(NextQuestion { run: "R-2", starts: Some(now) }));
        let asked = Waiting { run: "R-2", since: Some(Millis(1_000)) };
        assert_eq!(
            next_in_line(Some(&asked), now),
            Some(NextQuestion { run: "R-2", starts: None }),
            "asked again, its wait unchanged"
        );
    }
}
