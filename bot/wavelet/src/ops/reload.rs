//! Reloading: a running Wavelet looks at the workflows folder every `reload_interval`.
//! An edit that compiles replaces the version on offer (runs in flight keep theirs); an
//! edit that fails is refused, the coordinators are told where, and the old one serves.

use crate::runtime::LoadReport;
use crate::runtime::Runtime;
use std::sync::Arc;
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{keys, render};

/// Records what a (re)load found in the ledger and tells the coordinators about refused
/// files; loads are announced to them too when `announce_loads` (edits while running, not
/// every start).
pub async fn record(rt: &Runtime, report: &LoadReport, announce_loads: bool) {
    for (name, hash) in &report.loaded {
        tracing::info!(workflow = %name, version = %&hash[..12], "workflow loaded");
        let loaded = Record::WorkflowLoaded { workflow: name.clone() };
        let draft = Draft::of(rt.now(), "wavelet", loaded).in_run(None, Some(hash.clone()));
        if let Err(e) = rt.record(draft).await {
            tracing::warn!(error = %e, "workflow load not recorded");
        }
        if announce_loads {
            // The time makes each notice its own message (a version may be loaded again).
            let key = keys::workflow_reloaded(hash, rt.now().0);
            let _ = rt.notify_coordinators(&key, &render::workflow_reloaded(name, hash)).await;
        }
    }
    for e in &report.refused {
        tracing::warn!(file = %e.file, line = e.line, "workflow refused");
        let refused = Record::WorkflowRefused { file: e.file.clone(), error: e.to_string() };
        let draft = Draft::of(rt.now(), "wavelet", refused);
        if let Err(err) = rt.record(draft).await {
            tracing::warn!(error = %err, "workflow refusal not recorded");
        }
        let key = keys::workflow_refused(&e.file, rt.now().0);
        let _ = rt.notify_coordinators(&key, &render::workflow_refused(&e.file, &e.to_string())).await;
    }
}

pub fn spawn(rt: Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = rt.directory().config().workflows.reload_interval;
        let dir = rt.directory().config().workflows.dir.clone();
        loop {
            tokio::time::sleep(interval).await;
            let report = match rt.workflows().write() {
                Ok(mut w) => w.reload(rt.engine(), &dir),
                Err(_) => return,
            };
            record(&rt, &report, true).await;
            if !report.loaded.is_empty() || !report.refused.is_empty() {
                rt.wake().notify_one();
            }
        }
    })
}
