//! What operators, reviewers and coordinators run beside the bot: the audit commands
//! over the ledger, transcripts (workflows tested offline), and live reloading of the
//! workflows folder.

pub mod audit;
pub mod reload;
pub mod transcripts;
