//! Starting runs (by a command or a schedule) and finding the workflow version a run
//! is pinned to.

use super::{Runtime, WAVELET};
use std::sync::Arc;
use wavelet_core::engine::{History, Workflow};
use wavelet_core::ledger::{Draft, Record, ScheduleOrigin};
use wavelet_core::{Millis, RoomRef, keys, render};
use wavelet_store::{self as store, RunRow, RunStatus, Tx};

impl Runtime {
    /// Starts a scheduled workflow, once (its next time is set by [`Runtime::fire`]).
    pub(super) async fn start_scheduled(
        &self,
        tx: &mut Tx,
        s: &wavelet_store::DueSchedule,
        now: Millis,
    ) -> store::Result<()> {
        let late_ms = (now.0 - s.due_at.0).max(0);
        let wf = self.workflows.read().ok().and_then(|w| w.by_command(&s.workflow));
        let room = self.dir.group(&s.group_id).and_then(|g| g.rooms.first().cloned());
        let (Some(wf), Some(room)) = (wf, room) else {
            tracing::error!(schedule = %s.id, "scheduled workflow is not loaded; coordinators told");
            let text = format!(
                "Schedule `{}` could not start workflow `{}`: no loaded workflow has that command. `wavelet check` lists them.",
                s.id, s.workflow
            );
            let platform = self.group_platform(&s.group_id);
            let key = keys::schedule_failed(&s.id, s.due_at.0);
            self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await?;
            return Ok(());
        };
        let origin = ScheduleOrigin { schedule: s.id.clone(), due: s.due_at.rfc3339(), late_ms };
        self.start_run(tx, &wf, WAVELET, &s.group_id, room, &s.workflow, Some(origin), now).await
    }

    /// Starts a run of `wf` for `starter` (a person, or Wavelet itself for schedules) on
    /// behalf of `group`, and advances it to its first wait.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_run(
        &self,
        tx: &mut Tx,
        wf: &Workflow,
        starter: &str,
        group: &str,
        room: RoomRef,
        command: &str,
        origin: Option<ScheduleOrigin>,
        now: Millis,
    ) -> store::Result<()> {
        tx.save_script(&wf.hash, &wf.name, &wf.source, now).await?;
        let id = format!("R-{}", tx.next_number("run").await?);
        tracing::info!(run = %id, workflow = %wf.name, version = %&wf.hash[..12], "run started");
        let run = RunRow {
            id: id.clone(),
            workflow: wf.name.clone(),
            script_hash: wf.hash.clone(),
            status: RunStatus::Waiting,
            starter: starter.to_string(),
            group_id: group.to_string(),
            room: room.clone(),
            history: History::new(),
            wait: None,
            wait_person: None,
            wait_room: None,
            wait_seq: None,
            wait_since: None,
            error: None,
            created_at: now,
            updated_at: now,
        };
        let started = Record::RunStarted {
            workflow: wf.name.clone(),
            command: command.to_string(),
            group: group.to_string(),
            room: room.to_string(),
            origin,
        };
        tx.append(Draft::of(now, starter, started).in_run(Some(id), Some(wf.hash.clone())));
        self.advance(tx, run, wf, now).await
    }

    /// The version a run is pinned to: from memory, or compiled from the store.
    pub(super) async fn workflow_for(&self, tx: &mut Tx, run: &RunRow) -> store::Result<Option<Arc<Workflow>>> {
        if let Some(wf) = self.workflows.read().ok().and_then(|w| w.by_hash(&run.script_hash)) {
            return Ok(Some(wf));
        }
        let Some((name, source)) = tx.script_source(&run.script_hash).await? else { return Ok(None) };
        let path = self.dir.config().workflows.dir.join(format!("{name}.rhai"));
        match self.engine.compile(&name, &path, &source) {
            Ok(wf) => {
                let wf = Arc::new(wf);
                if let Ok(mut w) = self.workflows.write() {
                    w.remember(wf.clone());
                }
                Ok(Some(wf))
            }
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "pinned workflow version no longer compiles");
                Ok(None)
            }
        }
    }

    pub(super) async fn fail_unloadable(&self, tx: &mut Tx, mut run: RunRow, now: Millis) -> store::Result<()> {
        let platform = run.room.platform();
        let to_starter = render::run_failed_for_person(&run.id);
        self.tell_person(tx, &run, &run.starter, platform, keys::RunNotice::Failed, to_starter, now).await?;
        let note = render::run_failed_for_coordinator(&run.id, &run.workflow, "its pinned version could not be loaded");
        self.tell_coordinators(tx, &run, platform, note, now).await?;
        run.status = RunStatus::Failed;
        run.error = Some("the workflow version this run is pinned to could not be loaded".into());
        run.updated_at = now;
        tx.put_run(&run).await?;
        let failed = Record::RunFailed { error: run.error.clone() };
        tx.append(Draft::of(now, WAVELET, failed).in_run(Some(run.id.clone()), Some(run.script_hash.clone())));
        Ok(())
    }
}
