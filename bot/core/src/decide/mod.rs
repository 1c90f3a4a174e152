//! Pure decisions over rows already read: what the runtime must do for an event, decided
//! without a store, so each rule is tested in microseconds. The runtime reads the rows,
//! asks here, and writes what comes back.
//!
//! Architecture invariant: nothing here reads or writes; a rule about who may do what to
//! a run or a case lives here, not in the runtime's awaits.

mod acknowledge;
mod cancel;
mod dialog;

pub use acknowledge::{Acknowledgement, EscalationView, acknowledgement, may_acknowledge};
pub use cancel::{Cancel, CancelAsked, RunView, cancel, named_run};
pub use dialog::{Asking, NextQuestion, Waiting, ask, next_in_line};
