//! Wiring: reads the configuration, opens the store, loads the workflows and builds the
//! runtime. Shared by every command.

use crate::runtime::{Clock, Runtime};
use crate::store::Store;
use crate::workflows::{LoadReport, Workflows};
use anyhow::Context;
use std::path::Path;
use std::sync::{Arc, RwLock};
use wavelet_core::engine::{SandboxLimits, WorkflowEngine};
use wavelet_core::{Config, Directory};

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

/// Builds the runtime for a configuration on the given store URL.
pub async fn build(config: Config, store_url: &str, clock: Arc<dyn Clock>) -> anyhow::Result<Parts> {
    let store = Store::open(store_url)
        .await
        .with_context(|| format!("cannot open the store at {}", crate::store::redact(store_url)))?;
    let engine = Arc::new(WorkflowEngine::new(SandboxLimits::default()));
    let (workflows, load) = Workflows::load(&engine, &config.workflows.dir);
    let dir = Arc::new(Directory::new(config));
    let runtime = Arc::new(Runtime::new(store, dir, Arc::new(RwLock::new(workflows)), engine, clock));
    let now = runtime.clock.now();
    runtime
        .store
        .sync_schedules(&runtime.dir.config().schedules, now)
        .await
        .context("cannot bring the schedules up to date in the store")?;
    Ok(Parts { runtime, load })
}
