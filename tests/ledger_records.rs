//! The ledger's records, byte for byte. Every entry the shipped transcripts write, and
//! every entry of a tour through the rarer paths (refusals, acknowledgements, a failed
//! run, reads, an erasure, a refused reload, a parked delivery, the witness), is
//! snapshotted with its link and its content's canonical JSON. Everything runs on a
//! simulated clock, so the transcripts' hashes are stable too: a change to what any record holds, or
//! to how it is encoded, is a reviewed change of these snapshots (`cargo insta review`).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use wavelet::delivery::SendError;
use wavelet_core::ledger::{StoredEntry, canonical_json};

/// One line per entry: its link, then its content as hashed (or that it was erased),
/// then its hashes. With `folder`, that folder's path is written `<folder>`, and the
/// chain's hashes are left out (they cover the path, which differs from run to run), also
/// where content quotes one (the witness).
fn render(entries: &[StoredEntry], folder: Option<&str>) -> String {
    let mut out = String::new();
    for e in entries {
        let l = &e.link;
        let mut content = e.content.as_ref().map_or_else(|| "(erased)".to_string(), canonical_json);
        if let Some(f) = folder {
            content = without_chain_hashes(&content.replace(f, "<folder>"));
        }
        out.push_str(&format!(
            "{seq} at={at} {kind} case={case} run={run} actor={actor} script={script}\n  content={content}\n",
            seq = l.seq,
            at = l.at.0,
            kind = l.kind,
            case = l.case_id.as_deref().unwrap_or("-"),
            run = l.run_id.as_deref().unwrap_or("-"),
            actor = l.actor,
            script = l.script_hash.as_deref().unwrap_or("-"),
        ));
        if folder.is_none() {
            out.push_str(&format!("  content_hash={} prev={} hash={}\n", l.content_hash, &l.prev_hash[..16], l.hash));
        }
    }
    out
}

/// `text` with every 64-character hex string (a SHA-256) written `<sha256>`.
fn without_chain_hashes(text: &str) -> String {
    let mut out = String::new();
    let mut hex = String::new();
    let flush = |hex: &mut String, out: &mut String| {
        out.push_str(if hex.len() == 64 { "<sha256>" } else { hex.as_str() });
        hex.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            hex.push(c);
        } else {
            flush(&mut hex, &mut out);
            out.push(c);
        }
    }
    flush(&mut hex, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_transcript_writes_the_same_records() {
    let files = wavelet::ops::transcripts::find(&root().join("workflows"));
    assert!(files.len() >= 7, "expected the shipped transcripts, found {files:?}");
    for f in files {
        let played = wavelet::ops::transcripts::play(&f, None).await.unwrap_or_else(|e| panic!("{e}"));
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("transcript_{name}"), render(&played.ledger, None));
    }
}

/// Fails every send to one room, for good.
struct FailingRoom {
    room: RoomRef,
    sent: Mutex<Vec<OutboundMessage>>,
}

impl ChatAdapter for FailingRoom {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            if m.room == self.room {
                return Err(SendError::Permanent("no such room".into()));
            }
            self.sent.lock().unwrap().push(m.clone());
            Ok(())
        })
    }
}

const BROKEN: &str = "const COMMAND = \"broken\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let a = ask(ctx.starter, \"Q?\");\n    throw \"stopped on purpose\";\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rarer_records_keep_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("broken", BROKEN)]);
    let mut b = bot(&fresh("sqlite", dir.path()).await, Some(&wf)).await;
    // What a start records about the workflows it loaded (`wavelet run` does the same).
    let (_, report) = wavelet::runtime::Workflows::load(b.rt.engine(), &wf);
    wavelet::ops::reload::record(&b.rt, &report, false).await;

    // Refusals: someone the directory does not know, and someone without the role.
    b.say("zed", "north", "!concern").await;
    b.say("rey", "north", "!concern").await;

    // A concern at immediate risk: shared, delivered to the group's room, escalated.
    b.say("alice", "north", "!concern").await;
    b.say("alice", "dm", "AB 2015").await;
    b.say("alice", "dm", "neglect").await;
    b.say("alice", "dm", "yes").await;
    b.say("alice", "dm", "Seen today.").await;
    // Acknowledgements: refused, taken, late.
    b.say("eve", "dm", "ack C-1").await;
    b.say("carl", "dm", "ack C-1").await;
    b.say("bea", "north", "ack C-1").await;

    // A run cancelled by its starter, and a run whose script fails.
    b.say("dana", "north", "!concern").await;
    b.say("dana", "dm", "cancel").await;
    b.say("eve", "north", "!broken").await;
    b.say("eve", "dm", "an answer").await;

    // A reviewer reads the case and exports the ledger; an entry's content is erased.
    wavelet::ops::audit::show_case(&b.rt, "rey", "C-1", &mut Vec::new()).await.unwrap();
    wavelet::ops::audit::export(&b.rt, "rey", wavelet::ops::audit::Format::Jsonl, &mut Vec::new()).await.unwrap();
    let note = b.rt.store().ledger_page(0, i64::MAX).await.unwrap().into_iter().find(|e| e.link.kind == "case.note");
    let note = note.expect("the concern's details are a note on the case").link.seq;
    assert!(wavelet::ops::audit::erase(&b.rt, "rey", note, "RET-2026-001").await.unwrap());

    // An edit that does not compile is refused while running.
    std::fs::write(wf.join("broken.rhai"), "fn run(ctx) {\n  let = 1;\n}\n").unwrap();
    let report = b.rt.workflows().write().unwrap().reload(b.rt.engine(), &wf);
    wavelet::ops::reload::record(&b.rt, &report, true).await;

    // A group's room that refuses every message: its copy is parked and surfaced.
    let failing = Arc::new(FailingRoom {
        room: RoomRef::Shared { platform: Platform::Console, id: "north".into() },
        sent: Mutex::default(),
    });
    b.adapters = Adapters::default();
    b.adapters.add(failing.clone());
    b.say("bea", "north", "!concern").await;
    b.say("bea", "dm", "CD 2016").await;
    b.say("bea", "dm", "online").await;
    b.say("bea", "dm", "no").await;
    b.say("bea", "dm", "Messages seen.").await;

    // The next morning's witness.
    b.clock.advance(std::time::Duration::from_secs(16 * 3600));
    while b.rt.fire_due_timers().await.unwrap() > 0 {}
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    b.verify().await;

    let entries = b.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    let kinds: BTreeSet<&str> = entries.iter().map(|e| e.link.kind.as_str()).collect();
    for kind in [
        "workflow.loaded",
        "workflow.refused",
        "refused.unknown_person",
        "refused.not_allowed",
        "run.started",
        "run.finished",
        "run.failed",
        "run.cancelled",
        "question.asked",
        "question.answered",
        "message.told",
        "share",
        "share.delivered",
        "case.opened",
        "case.note",
        "escalation.started",
        "escalation.notified",
        "case.acknowledged",
        "acknowledgement.late",
        "acknowledgement.refused",
        "audit.read",
        "content.erased",
        "delivery.failed",
        "ledger.witnessed",
    ] {
        assert!(kinds.contains(kind), "the tour writes no {kind}: {kinds:?}");
    }
    insta::assert_snapshot!("tour", render(&entries, Some(&dir.path().display().to_string())));
}
