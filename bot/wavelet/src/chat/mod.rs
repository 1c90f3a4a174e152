//! The chat platforms: the console room, Matrix (feature `matrix`) and Discord (feature
//! `discord`). Each converts its platform's events into `InboundEvent`s at the border and
//! sends `OutboundMessage`s through [`crate::delivery::ChatAdapter`]; nothing outside this
//! folder names matrix-sdk or serenity, and this folder reaches the runtime only through
//! [`ChatContext`].

pub mod console;
mod context;
#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "matrix")]
pub mod matrix;

pub use context::ChatContext;
