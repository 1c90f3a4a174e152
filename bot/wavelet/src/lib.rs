//! The Wavelet bot around its I/O-free core: the stores, the runtime that turns inbound
//! events into durable steps, the outbox and timers, the console room, transcripts and
//! the audit commands. `main.rs` only parses the command line and calls in here.

pub mod adapter;
pub mod app;
pub mod audit;
pub mod console;
#[cfg(feature = "discord")]
pub mod discord;
pub mod faults;
pub mod ingest;
#[cfg(feature = "matrix")]
pub mod matrix;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod transcripts;
pub mod workflows;
