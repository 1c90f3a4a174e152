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

/// What the platforms' libraries say on a healthy run that an operator would read as a
/// fault, left out of the default log (`WAVELET_LOG` brings it back): matrix-sdk logs every
/// failed request at ERROR, the expected 404s for account data not set up (secret storage)
/// included; a WARN per synced room key when key backup is off (Wavelet does not back up
/// keys); and, at a first login, a WARN that the new device "might have been deleted" (the
/// homeserver has not listed it yet). A request Wavelet makes that fails is logged by
/// Wavelet, by id.
pub const QUIET_BY_DEFAULT: &str =
    "matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error,matrix_sdk_crypto::identities::manager=error";
