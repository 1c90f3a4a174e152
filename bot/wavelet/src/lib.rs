//! The Wavelet bot around its I/O-free core (`wavelet-core`) and its store
//! (`wavelet-store`). `main.rs` only parses the command line and calls in here.
//!
//! | module | what it is |
//! | --- | --- |
//! | `runtime` | inbound events and due work → durable steps, one transaction each (or a batch) |
//! | `delivery` | the chat-adapter boundary, delivery passes, the background loop, the ingest |
//! | `chat` | the console room, Matrix and Discord: the only code that names a platform's types |
//! | `ops` | what operators and reviewers run: audit, transcripts, reloading workflows |
//! | `app` | wiring: configuration, store, workflows, runtime, platforms |
//! | `faults` | crash points for the fault tests (`WAVELET_TEST_CRASH_AT`) |

pub mod app;
pub mod chat;
pub mod delivery;
pub mod faults;
pub mod ops;
pub mod runtime;
