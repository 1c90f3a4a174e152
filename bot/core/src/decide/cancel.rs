//! Cancelling a run: which one a `cancel` means, and the rule that only its starter may,
//! and only while it waits.

/// A run, as a cancel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub starter: &'a str,
    /// Still waiting (not finished, failed, diverged or cancelled).
    pub waiting: bool,
}

/// What the runtime read for a cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelAsked<'a> {
    /// `!cancel R-3`: the run named (`None` if there is no such run).
    Named { id: &'a str, run: Option<RunView<'a>> },
    /// Plain `cancel`, said in a room.
    Here {
        /// The person's own run waiting on them in this room, the oldest.
        own_dialog: Option<RunView<'a>>,
        /// Who started the run whose question waits on them here, when it is not theirs
        /// (`""` if that run is gone).
        someone_elses: Option<&'a str>,
        /// Every waiting run the person started, anywhere, oldest first.
        mine: Vec<RunView<'a>>,
    },
}

/// What a cancel does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancel<'a> {
    /// This run is cancelled.
    Run(&'a str),
    /// The run named is not one this person may cancel (not theirs, not waiting, or no
    /// such run): said so, nothing changes.
    CannotCancel(&'a str),
    /// The question waiting here is from someone else's workflow: only they may end it.
    NotYourDialog(&'a str),
    /// Several of their runs wait and none is here: they are listed (`R-3 (concern)`),
    /// to name one.
    WhichOne(Vec<String>),
    /// Nothing of theirs waits.
    Nothing,
}

/// The run a `cancel` message names (`!cancel R-3`), if it names one.
pub fn named_run(text: &str) -> Option<&str> {
    text.split_whitespace().nth(1).filter(|w| w.starts_with("R-"))
}

/// What `person`'s cancel does. A run named is cancelled only if they started it and it
/// waits; plain `cancel` means their own dialog in this room, else a question from someone
/// else's workflow here is not theirs to end, else their one waiting run anywhere.
pub fn cancel<'a>(person: &str, asked: CancelAsked<'a>) -> Cancel<'a> {
    match asked {
        CancelAsked::Named { id, run } => match run {
            Some(r) if r.starter == person && r.waiting => Cancel::Run(r.id),
            _ => Cancel::CannotCancel(id),
        },
        CancelAsked::Here { own_dialog: Some(own), .. } => Cancel::Run(own.id),
        CancelAsked::Here { someone_elses: Some(starter), .. } => Cancel::NotYourDialog(starter),
        CancelAsked::Here { mine, .. } => match mine.as_slice() {
            [] => Cancel::Nothing,
            [only] => Cancel::Run(only.id),
            several => Cancel::WhichOne(several.iter().map(|r| format!("{} ({})", r.id, r.workflow)).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(id: &'a str, starter: &'a str, waiting: bool) -> RunView<'a> {
        RunView { id, workflow: "concern", starter, waiting }
    }

    #[test]
    fn a_named_run_is_cancelled_only_by_its_starter_while_it_waits() {
        let cases = [
            (Some(run("R-3", "alice", true)), "alice", Cancel::Run("R-3")),
            (Some(run("R-3", "bea", true)), "alice", Cancel::CannotCancel("R-3")),
            (Some(run("R-3", "alice", false)), "alice", Cancel::CannotCancel("R-3")),
            (None, "alice", Cancel::CannotCancel("R-3")),
        ];
        for (r, person, expected) in cases {
            assert_eq!(cancel(person, CancelAsked::Named { id: "R-3", run: r.clone() }), expected, "{r:?} by {person}");
        }
    }

    #[test]
    fn plain_cancel_means_the_own_dialog_here_before_anything_else() {
        let asked = CancelAsked::Here {
            own_dialog: Some(run("R-2", "alice", true)),
            someone_elses: Some("bea"),
            mine: vec![run("R-1", "alice", true), run("R-2", "alice", true)],
        };
        assert_eq!(cancel("alice", asked), Cancel::Run("R-2"));
    }

    #[test]
    fn someone_elses_question_here_is_not_theirs_to_end() {
        let asked =
            CancelAsked::Here { own_dialog: None, someone_elses: Some("bea"), mine: vec![run("R-1", "alice", true)] };
        assert_eq!(cancel("alice", asked), Cancel::NotYourDialog("bea"));
    }

    #[test]
    fn elsewhere_plain_cancel_takes_the_one_waiting_run_or_asks_which() {
        let here = |mine| CancelAsked::Here { own_dialog: None, someone_elses: None, mine };
        assert_eq!(cancel("alice", here(vec![])), Cancel::Nothing);
        assert_eq!(cancel("alice", here(vec![run("R-1", "alice", true)])), Cancel::Run("R-1"));
        assert_eq!(
            cancel("alice", here(vec![run("R-1", "alice", true), run("R-4", "alice", true)])),
            Cancel::WhichOne(vec!["R-1 (concern)".into(), "R-4 (concern)".into()])
        );
    }

    #[test]
    fn only_a_second_word_that_looks_like_a_run_names_one() {
        assert_eq!(named_run("!cancel R-3"), Some("R-3"));
        assert_eq!(named_run("cancel  R-12 please"), Some("R-12"));
        assert_eq!(named_run("cancel"), None);
        assert_eq!(named_run("cancel it"), None);
    }
}
