//! What the bot itself says (as opposed to what scripts say): help, refusals, failures,
//! cancellations. One place, so wording stays consistent and transcripts can pin it.

use crate::engine::WorkflowMeta;

pub fn help<'a>(offered: impl IntoIterator<Item = &'a WorkflowMeta>) -> String {
    let mut lines: Vec<String> = offered
        .into_iter()
        .map(|m| {
            if m.description.is_empty() {
                format!("!{}", m.command)
            } else {
                format!("!{} — {}", m.command, m.description)
            }
        })
        .collect();
    if lines.is_empty() {
        return "There is nothing you can start here. `cancel` ends an open dialog.".into();
    }
    lines.sort();
    format!("You can start:\n{}\n`cancel` ends an open dialog.", lines.join("\n"))
}

pub fn unknown_person() -> String {
    "Sorry, I don't know you, so I can't act on this. Please ask your coordinator to add you to Wavelet's directory."
        .into()
}

pub fn not_allowed(command: &str) -> String {
    format!("Sorry, your role does not allow you to start `{command}`. `!help` lists what you can start.")
}

pub fn unknown_command(command: &str) -> String {
    format!("I don't know `{command}`. `!help` lists what you can start.")
}

pub fn no_group() -> String {
    "You are not a member of a group that uses this room, so I can't start that here. Try from your group's room."
        .into()
}

pub fn busy(command: &str) -> String {
    format!(
        "You already have a question from me waiting here. Answer it, or send `cancel`, before starting `{command}`."
    )
}

pub fn cancelled() -> String {
    "Cancelled. Nothing more will be asked or shared for that dialog; what was already recorded stays recorded.".into()
}

pub fn nothing_to_cancel() -> String {
    "There is no open dialog to cancel here.".into()
}

pub fn run_failed_for_person(run_id: &str) -> String {
    format!(
        "Sorry, something went wrong in this workflow and it has stopped ({run_id}). Your answers so far are recorded, and the coordinators have been told. Please tell your safeguarding lead directly if this is urgent."
    )
}

pub fn run_failed_for_coordinator(run_id: &str, workflow: &str, place: &str) -> String {
    format!(
        "Workflow `{workflow}` failed in run {run_id} at {place}. The error is in the ledger's run.failed entry for {run_id} (`wavelet audit export`); `wavelet check` and transcripts help find it."
    )
}

pub fn nothing_waiting() -> String {
    "I have no question waiting for you here, so I have not recorded this. `!help` lists what you can start; to add to a concern you raised, tell your safeguarding lead.".into()
}

pub fn not_your_dialog(starter: &str) -> String {
    format!(
        "This question is part of a workflow {starter} started, so only they can cancel it. Please answer it, or tell them."
    )
}

/// A click on a button of an earlier question while `prompt` waits.
pub fn on_another_question(prompt: &str) -> String {
    let p: String = crate::text::one_line(prompt).chars().take(200).collect();
    format!(
        "That button belongs to an earlier question, so I have not taken it as the answer to: \"{p}\" Please answer this one."
    )
}

pub fn before_the_question(prompt: &str) -> String {
    let p: String = crate::text::one_line(prompt).chars().take(200).collect();
    format!(
        "Your message reached me before my question did, so I have not taken it as the answer to: \"{p}\" Please send your answer again."
    )
}

pub fn run_diverged_for_coordinator(run_id: &str, workflow: &str, step: usize) -> String {
    format!(
        "Run {run_id} of `{workflow}` stopped: replaying it asked for a different step {step} than it recorded. Nothing was sent; please look at the run."
    )
}

pub fn workflow_refused(file: &str, error: &str) -> String {
    format!("The edited workflow {file} was not loaded, the previous version keeps serving: {error}")
}

pub fn workflow_reloaded(name: &str, hash: &str) -> String {
    format!(
        "Workflow `{name}` reloaded (version {}). Runs already started keep their version.",
        &hash[..12.min(hash.len())]
    )
}

pub fn question_queued() -> String {
    "I have another question for you waiting above; I'll ask the next one as soon as you have answered it.".into()
}

pub fn cannot_cancel(run: &str) -> String {
    format!("I can't cancel {run}: only a waiting run you started can be cancelled.")
}

pub fn which_to_cancel(runs: &[String]) -> String {
    let example = runs.first().and_then(|r| r.split(' ').next()).unwrap_or("R-1");
    format!(
        "You have several open workflows: {}. Send `!cancel` with the one to end, e.g. `!cancel {example}`.",
        runs.join(", ")
    )
}

/// A duration for people: `45 s`, `5 min`, `2 h 5 min`, `3 days 2 h`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3_600, (s % 3_600) / 60);
    match (d, h, m) {
        (0, 0, 0) if s == 0 => "less than a second".to_string(),
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (1, 0, _) => "1 day".to_string(),
        (1, h, _) => format!("1 day {h} h"),
        (d, 0, _) => format!("{d} days"),
        (d, h, _) => format!("{d} days {h} h"),
    }
}

/// Added to what goes out late (Wavelet was not running, or could not reach its
/// database, when it fell due).
pub fn late_note(due: crate::Millis, late_ms: i64) -> String {
    format!(" (This was due at {} and comes {} late.)", due.short(), span(late_ms))
}

/// How a person is named to others in a message: name and agency, never an account.
pub fn person_label(p: &crate::config::Person, agency: Option<&crate::config::Agency>) -> String {
    match agency {
        Some(a) => format!("{} ({})", p.name, a.name),
        None => p.name.clone(),
    }
}

pub fn ack_thanks(case: &str) -> String {
    format!(
        "Thank you: you have acknowledged {case}. The escalation has stopped, and the person who raised it has been told."
    )
}

pub fn ack_for_raiser(case: &str, by: &str, at: crate::Millis, after_ms: Option<i64>) -> String {
    match after_ms {
        Some(ms) => format!("{by} acknowledged {case} at {}, {} after it was escalated.", at.short(), span(ms)),
        None => format!("{by} acknowledged {case} at {}.", at.short()),
    }
}

pub fn ack_for_others(case: &str, by: &str) -> String {
    format!("{case} has been acknowledged by {by}: no action is needed from you for this escalation.")
}

pub fn ack_late(case: &str, by: &str, at: crate::Millis) -> String {
    format!("{case} was already acknowledged by {by} at {}. Your acknowledgement is recorded too.", at.short())
}

pub fn ack_nothing_pending(case: &str) -> String {
    format!("Nothing is waiting for an acknowledgement on {case} now. Your acknowledgement is recorded.")
}

pub fn ack_not_allowed(case: &str) -> String {
    format!(
        "Sorry, only the people an escalation of {case} notified, or the leads of its group, can acknowledge it. This attempt is recorded."
    )
}

pub fn ack_which() -> String {
    "Which case? Send e.g. `ack C-42`.".into()
}

pub fn ack_no_case(case: &str) -> String {
    format!("There is no case {case}. Check the id in the message you were sent, e.g. `ack C-42`.")
}

pub fn delivery_failed_for_coordinator(key: &str, room: &str, attempts: i32, run: Option<&str>) -> String {
    let run = run.map(|r| format!(" for run {r}")).unwrap_or_default();
    format!(
        "Wavelet could not deliver a message{run} to {room} after {attempts} attempts and has stopped trying. It is kept in the outbox (key {key}); the ledger's delivery.failed entry has the error. Please check the room and the bot's access to it."
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_naturally() {
        assert_eq!(super::span(45_000), "45 s");
        assert_eq!(super::span(400), "less than a second");
        assert_eq!(super::span(5 * 60_000), "5 min");
        assert_eq!(super::span(2 * 3_600_000), "2 h");
        assert_eq!(super::span(2 * 3_600_000 + 5 * 60_000), "2 h 5 min");
        assert_eq!(super::span(86_400_000 + 3_600_000), "1 day 1 h");
        assert_eq!(super::span(3 * 86_400_000), "3 days");
    }
}
