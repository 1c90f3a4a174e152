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
