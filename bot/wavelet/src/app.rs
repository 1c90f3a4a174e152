//! Wiring: reads the configuration, opens the store, loads the workflows and builds the
//! runtime. Shared by every command.

use crate::chat::ChatContext;
use crate::runtime::{Clock, Runtime};
use crate::runtime::{LoadReport, Workflows};
use anyhow::Context;
use std::path::Path;
use std::sync::{Arc, RwLock};
use wavelet_core::engine::{SandboxLimits, WorkflowEngine};
use wavelet_core::{Config, Directory};
use wavelet_store::Store;

/// Reads and checks a configuration file, with every mistake in the error.
pub fn load_config(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let source = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the configuration {}; pass --config PATH (examples/wavelet.toml is a worked example)",
            path.display()
        )
    })?;
    Config::parse(path, &source, env).map_err(|e| anyhow::anyhow!("{e}"))
}

pub struct Parts {
    pub runtime: Arc<Runtime>,
    pub load: LoadReport,
}

/// Builds the runtime for a configuration on the given store URL, to serve: the store's
/// schedules (the workflows' and the ledger witness's) are brought in line with the
/// configuration.
pub async fn build(config: Config, store_url: &str, clock: Arc<dyn Clock>) -> anyhow::Result<Parts> {
    let parts = open(config, store_url, clock).await?;
    let runtime = &parts.runtime;
    let now = runtime.clock().now();
    // The workflows' schedules, and the ledger witness's when `[audit]` asks for one.
    let config = runtime.directory().config();
    let schedules: Vec<_> =
        config.schedules.iter().cloned().chain(config.witness.as_ref().map(|w| w.schedule())).collect();
    runtime
        .store()
        .sync_schedules(&schedules, now)
        .await
        .context("cannot bring the schedules up to date in the store")?;
    Ok(parts)
}

/// Builds the runtime without touching the store's schedules: for reading the store (the
/// audit commands), where a reviewer's copy of the configuration must not switch off
/// what the serving one schedules, such as the ledger witness.
pub async fn open(config: Config, store_url: &str, clock: Arc<dyn Clock>) -> anyhow::Result<Parts> {
    let store = Store::open(store_url)
        .await
        .with_context(|| format!("cannot open the store at {}", wavelet_store::redact(store_url)))?;
    let engine = Arc::new(WorkflowEngine::new(SandboxLimits::default()));
    let (workflows, load) = Workflows::load(&engine, &config.workflows.dir);
    let dir = Arc::new(Directory::new(config));
    let runtime = Arc::new(Runtime::new(store, dir, Arc::new(RwLock::new(workflows)), engine, clock));
    Ok(Parts { runtime, load })
}

/// The chat platforms' connections while Wavelet serves: their inbound loops, and what
/// stops them.
#[derive(Default)]
pub struct Platforms {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    #[cfg(feature = "matrix")]
    matrix: Option<Arc<crate::chat::matrix::MatrixAdapter>>,
    #[cfg(feature = "discord")]
    discord: Option<Arc<crate::chat::discord::DiscordAdapter>>,
}

impl Platforms {
    /// Waits until a platform's connection ends for good (a revoked Discord token), and
    /// says why; never, while every one is connected or none is configured.
    pub async fn lost(&mut self) -> anyhow::Error {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (ended, index, _) = futures_util::future::select_all(self.tasks.iter_mut()).await;
        // Ended: not to be waited for again (a finished task polled again panics).
        drop(self.tasks.remove(index));
        match ended {
            Ok(Ok(())) => anyhow::anyhow!("a chat platform's connection ended"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a chat platform's task failed: {e}"),
        }
    }

    /// Stops taking events on every platform: the Matrix sync loop ends, the Discord
    /// gateway closes once what had arrived is handed in. Waits at most `within` for the
    /// loops to end, then drops what is left of them. Sending goes on working.
    pub async fn stop(self, within: std::time::Duration) {
        #[cfg(feature = "matrix")]
        if let Some(m) = &self.matrix {
            m.stop();
        }
        #[cfg(feature = "discord")]
        if let Some(d) = &self.discord {
            d.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + within;
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "a chat platform's connection ended with an error at the stop")
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("a chat platform's connection did not end in time; dropped");
                    task.abort();
                }
            }
        }
    }
}

/// Connects the chat platforms the configuration names (Matrix with the `matrix` feature,
/// Discord with the `discord` feature), adds their adapters, and starts their inbound
/// loops, which hand events in through `ctx`. A loop that ends on its own has lost its
/// platform for good (a revoked Discord token) and says why ([`Platforms::lost`]).
pub async fn start_platforms(ctx: &ChatContext, adapters: &mut crate::delivery::Adapters) -> anyhow::Result<Platforms> {
    #[cfg_attr(not(any(feature = "matrix", feature = "discord")), allow(unused_mut))]
    let mut platforms = Platforms::default();
    let config = ctx.directory().config();
    if let Some(cfg) = config.matrix.clone() {
        #[cfg(feature = "matrix")]
        {
            let secrets = crate::chat::matrix::Secrets::from_env();
            let m = crate::chat::matrix::MatrixAdapter::connect(&cfg, &secrets, ctx.clone()).await?;
            adapters.add(m.clone());
            platforms.matrix = Some(m.clone());
            platforms.tasks.push(tokio::spawn(async move {
                m.run().await;
                Ok(())
            }));
        }
        #[cfg(not(feature = "matrix"))]
        {
            let _ = &adapters;
            anyhow::bail!(
                "{} configures [matrix] (homeserver {}), but this wavelet was built without Matrix: build it with `cargo build --release -p wavelet --features matrix`",
                config.path.display(),
                cfg.homeserver
            );
        }
    }
    if let Some(cfg) = config.discord.clone() {
        #[cfg(feature = "discord")]
        {
            let token = std::env::var(crate::chat::discord::TOKEN_ENV).ok();
            let d = crate::chat::discord::DiscordAdapter::connect(&cfg, token.as_deref(), ctx.clone()).await?;
            adapters.add(d.clone());
            platforms.discord = Some(d.clone());
            platforms.tasks.push(tokio::spawn(d.run()));
        }
        #[cfg(not(feature = "discord"))]
        {
            let _ = (cfg, &adapters);
            anyhow::bail!(
                "{} configures [discord], but this wavelet was built without Discord: build it with `cargo build --release -p wavelet --features discord`",
                config.path.display()
            );
        }
    }
    Ok(platforms)
}
