//! Wavelet's I/O-free core: the words of the domain, the configuration and directory,
//! the replaying workflow engine, the ledger's hash chain, routing decisions and the
//! transcript format. Nothing here touches a network, a database or a clock of its own:
//! the edges (`wavelet`'s stores, runtime and adapters) hand everything in.

pub mod clock;
pub mod config;
pub mod decide;
pub mod directory;
pub mod domain;
pub mod engine;
pub mod escalation;
pub mod keys;
pub mod ledger;
pub mod render;
pub mod router;
pub mod schedule;
pub mod text;
pub mod transcript;

pub use config::{Config, ConfigError, ConfigErrors};
pub use directory::Directory;
pub use domain::*;
