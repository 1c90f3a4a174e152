//! Acknowledging a case: who may, what it stops, whom it tells, and a late one.

use crate::Millis;
use crate::ledger::StoppedEscalation;

/// One escalation of a case, as an acknowledgement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationView<'a> {
    pub id: &'a str,
    /// Still going (not acknowledged, stopped or finished).
    pub active: bool,
    /// The stage it has reached, 0-based.
    pub stage: usize,
    pub started_at: Millis,
    /// Everyone a stage notified by name.
    pub notified: &'a [String],
    /// Who acknowledged it, and when.
    pub acked: Option<(&'a str, Millis)>,
}

/// Whether `person` may acknowledge a case: a lead of the case's group, or someone a stage
/// of one of its escalations notified by name. A notice in a room reaches everyone there,
/// so it does not by itself make them able to.
pub fn may_acknowledge(person: &str, is_lead_of_group: bool, escalations: &[EscalationView<'_>]) -> bool {
    is_lead_of_group || escalations.iter().any(|e| e.notified.iter().any(|p| p == person))
}

/// What an allowed acknowledgement does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acknowledgement {
    /// Nothing was waiting: the case was acknowledged before (by whom and when, the
    /// latest), or never escalated. Recorded and answered, never an error.
    Late { last: Option<(String, Millis)> },
    /// It is taken: these escalations stop (by index in the list given), these people
    /// (notified before, in order, each once) are told it is taken, and `since` is when
    /// the earliest of them started.
    Taken { stop: Vec<usize>, stopped: Vec<StoppedEscalation>, others: Vec<String>, since: Option<Millis> },
}

/// What acknowledging a case at `now` does, given its escalations and how many runs were
/// waiting for the acknowledgement.
pub fn acknowledgement(escalations: &[EscalationView<'_>], runs_waiting: usize, now: Millis) -> Acknowledgement {
    let active: Vec<usize> = (0..escalations.len()).filter(|&i| escalations[i].active).collect();
    if active.is_empty() && runs_waiting == 0 {
        let last =
            escalations.iter().filter_map(|e| e.acked).max_by_key(|(_, at)| *at).map(|(by, at)| (by.to_string(), at));
        return Acknowledgement::Late { last };
    }
    let mut stopped = Vec::new();
    let mut others: Vec<String> = Vec::new();
    let mut since: Option<Millis> = None;
    for &i in &active {
        let e = &escalations[i];
        since = Some(since.map_or(e.started_at, |s| s.min(e.started_at)));
        stopped.push(StoppedEscalation {
            escalation: e.id.to_string(),
            stage: e.stage + 1,
            after_ms: now.0 - e.started_at.0,
        });
        for p in e.notified {
            if !others.contains(p) {
                others.push(p.clone());
            }
        }
    }
    Acknowledgement::Taken { stop: active, stopped, others, since }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc<'a>(id: &'a str, active: bool, notified: &'a [String], acked: Option<(&'a str, i64)>) -> EscalationView<'a> {
        EscalationView {
            id,
            active,
            stage: 1,
            started_at: Millis(1_000),
            notified,
            acked: acked.map(|(by, at)| (by, Millis(at))),
        }
    }

    #[test]
    fn only_a_lead_or_someone_notified_by_name_may_acknowledge() {
        let notified = vec!["bea".to_string(), "carl".to_string()];
        let escalations = [esc("E-1", true, &notified, None)];
        for (person, lead, may) in
            [("carl", false, true), ("bea", false, true), ("eve", false, false), ("eve", true, true)]
        {
            assert_eq!(may_acknowledge(person, lead, &escalations), may, "{person}, lead: {lead}");
        }
        assert!(!may_acknowledge("eve", false, &[]), "nothing escalated: only leads");
    }

    #[test]
    fn an_acknowledgement_stops_every_active_escalation_and_tells_the_others_once() {
        let first = vec!["bea".to_string(), "carl".to_string()];
        let second = vec!["carl".to_string(), "cora".to_string()];
        let mut later = esc("E-2", true, &second, None);
        later.started_at = Millis(500);
        later.stage = 0;
        let escalations = [esc("E-1", true, &first, None), esc("E-0", false, &first, Some(("bea", 900))), later];
        let Acknowledgement::Taken { stop, stopped, others, since } = acknowledgement(&escalations, 0, Millis(4_000))
        else {
            panic!("taken")
        };
        assert_eq!(stop, vec![0, 2]);
        assert_eq!(
            stopped,
            vec![
                StoppedEscalation { escalation: "E-1".into(), stage: 2, after_ms: 3_000 },
                StoppedEscalation { escalation: "E-2".into(), stage: 1, after_ms: 3_500 },
            ]
        );
        assert_eq!(others, vec!["bea", "carl", "cora"]);
        assert_eq!(since, Some(Millis(500)));
    }

    #[test]
    fn a_run_waiting_for_it_makes_an_acknowledgement_count_with_nothing_escalating() {
        let Acknowledgement::Taken { stop, stopped, others, since } = acknowledgement(&[], 1, Millis(4_000)) else {
            panic!("taken: a run was waiting")
        };
        assert!(stop.is_empty() && stopped.is_empty() && others.is_empty() && since.is_none());
    }

    #[test]
    fn a_late_acknowledgement_names_the_latest_one_before_it() {
        let n: Vec<String> = Vec::new();
        let escalations = [
            esc("E-1", false, &n, Some(("carl", 2_000))),
            esc("E-2", false, &n, Some(("bea", 3_000))),
            esc("E-3", false, &n, None),
        ];
        assert_eq!(
            acknowledgement(&escalations, 0, Millis(9_000)),
            Acknowledgement::Late { last: Some(("bea".into(), Millis(3_000))) }
        );
        assert_eq!(acknowledgement(&[], 0, Millis(9_000)), Acknowledgement::Late { last: None });
    }
}
