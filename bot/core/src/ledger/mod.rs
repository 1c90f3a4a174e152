//! The ledger's hash chain (DESIGN.md, "Storage"): canonical encoding, hashing, appending
//! and verification, with no storage of its own. Each entry carries the hash of its
//! content (the content itself sits beside the chain, so a lawful erasure can remove it
//! and leave the hash) and the hash of the entry before it.
//!
//! Over 800 lines with its tests: the encoding, the chain and their tests are read
//! together; the record types are in `records.rs`.

mod records;

pub use records::{AuditReadOf, OutboxMessage, Recipient, Record, ScheduleOrigin, StoppedEscalation};

use crate::domain::Millis;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What kind of event an entry records. Stored as its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "run.finished")]
    RunFinished,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.diverged")]
    RunDiverged,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    #[serde(rename = "question.asked")]
    QuestionAsked,
    #[serde(rename = "question.answered")]
    QuestionAnswered,
    #[serde(rename = "message.told")]
    MessageTold,
    #[serde(rename = "message.sent")]
    MessageSent,
    #[serde(rename = "share")]
    Share,
    /// A decision not to share, with its reason (nothing was sent).
    #[serde(rename = "share.declined")]
    ShareDeclined,
    #[serde(rename = "case.opened")]
    CaseOpened,
    #[serde(rename = "case.closed")]
    CaseClosed,
    #[serde(rename = "case.note")]
    CaseNote,
    #[serde(rename = "timer.set")]
    TimerSet,
    #[serde(rename = "timer.fired")]
    TimerFired,
    #[serde(rename = "refused.unknown_person")]
    RefusedUnknownPerson,
    #[serde(rename = "refused.not_allowed")]
    RefusedNotAllowed,
    #[serde(rename = "workflow.loaded")]
    WorkflowLoaded,
    #[serde(rename = "workflow.refused")]
    WorkflowRefused,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "content.erased")]
    ContentErased,
    #[serde(rename = "escalation.started")]
    EscalationStarted,
    #[serde(rename = "escalation.notified")]
    EscalationNotified,
    #[serde(rename = "case.acknowledged")]
    CaseAcknowledged,
    #[serde(rename = "acknowledgement.late")]
    AcknowledgementLate,
    #[serde(rename = "acknowledgement.refused")]
    AcknowledgementRefused,
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    #[serde(rename = "refused.invite")]
    RefusedInvite,
    /// One room's copy of a share reached the chat platform.
    #[serde(rename = "share.delivered")]
    ShareDelivered,
    /// The chain's head was posted outside it, as a witness (`[audit]`).
    #[serde(rename = "ledger.witnessed")]
    LedgerWitnessed,
    /// The witness found the chain broken since the last one, and posted an alarm instead.
    #[serde(rename = "ledger.witness_withheld")]
    LedgerWitnessWithheld,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::RunStarted => "run.started",
            EntryKind::RunFinished => "run.finished",
            EntryKind::RunFailed => "run.failed",
            EntryKind::RunDiverged => "run.diverged",
            EntryKind::RunCancelled => "run.cancelled",
            EntryKind::QuestionAsked => "question.asked",
            EntryKind::QuestionAnswered => "question.answered",
            EntryKind::MessageTold => "message.told",
            EntryKind::MessageSent => "message.sent",
            EntryKind::Share => "share",
            EntryKind::ShareDeclined => "share.declined",
            EntryKind::CaseOpened => "case.opened",
            EntryKind::CaseClosed => "case.closed",
            EntryKind::CaseNote => "case.note",
            EntryKind::TimerSet => "timer.set",
            EntryKind::TimerFired => "timer.fired",
            EntryKind::RefusedUnknownPerson => "refused.unknown_person",
            EntryKind::RefusedNotAllowed => "refused.not_allowed",
            EntryKind::WorkflowLoaded => "workflow.loaded",
            EntryKind::WorkflowRefused => "workflow.refused",
            EntryKind::AuditRead => "audit.read",
            EntryKind::ContentErased => "content.erased",
            EntryKind::EscalationStarted => "escalation.started",
            EntryKind::EscalationNotified => "escalation.notified",
            EntryKind::CaseAcknowledged => "case.acknowledged",
            EntryKind::AcknowledgementLate => "acknowledgement.late",
            EntryKind::AcknowledgementRefused => "acknowledgement.refused",
            EntryKind::DeliveryFailed => "delivery.failed",
            EntryKind::RefusedInvite => "refused.invite",
            EntryKind::ShareDelivered => "share.delivered",
            EntryKind::LedgerWitnessed => "ledger.witnessed",
            EntryKind::LedgerWitnessWithheld => "ledger.witness_withheld",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry before it joins the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub at: Millis,
    pub kind: EntryKind,
    pub case_id: Option<String>,
    pub run_id: Option<String>,
    /// The person (or `wavelet` itself, or an account for unknown senders) who acted.
    pub actor: String,
    /// The script version the act happened under, when a run did it.
    pub script_hash: Option<String>,
    pub content: serde_json::Value,
}

/// The chained part of an entry: everything but the content, which sits beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: i64,
    pub at: Millis,
    pub kind: String,
    pub case_id: Option<String>,
    pub run_id: Option<String>,
    pub actor: String,
    pub script_hash: Option<String>,
    pub content_hash: String,
    pub prev_hash: String,
    pub hash: String,
}

/// An entry as read back from a store: its link and its content, unless erased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub link: Link,
    /// `None` once lawfully erased (the hash stays in the link).
    pub content: Option<serde_json::Value>,
}

/// Writes JSON with object keys sorted and no spaces: the one encoding hashes are over.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // serde_json writes UTF-8 only, so this never falls back.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Strings and scalars are written as serde_json writes them (the same bytes as their
/// `to_string()`), straight into `out`.
fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(k, out);
                out.push(b':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => write_json(other, out),
    }
}

fn write_json<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string or a scalar into memory cannot fail.
    let _ = serde_json::to_writer(out, v);
}

pub fn content_hash(content: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(canonical_json(content).as_bytes()))
}

/// The hash of a link: SHA-256 over each field, length-prefixed, in a fixed order.
pub fn link_hash(l: &Link) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(b"wavelet-ledger-v1");
    field(&l.seq.to_be_bytes());
    field(&l.at.0.to_be_bytes());
    field(l.kind.as_bytes());
    // An absent field is one 0 byte; a present one a 1 byte and its text: never equal.
    let optional = |o: &Option<String>| match o {
        None => vec![0u8],
        Some(s) => [&[1u8][..], s.as_bytes()].concat(),
    };
    field(&optional(&l.case_id));
    field(&optional(&l.run_id));
    field(l.actor.as_bytes());
    field(&optional(&l.script_hash));
    field(l.content_hash.as_bytes());
    field(l.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

/// The newest entry of a chain: where the next one attaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head { seq: 0, hash: GENESIS_HASH.to_string() }
    }

    /// Chains a draft after this head and moves the head to it.
    pub fn append(&mut self, d: &Draft) -> Link {
        self.append_encoded(d).0
    }

    /// [`Head::append`], also returning the content's canonical encoding (what a store
    /// keeps), so it is computed once.
    pub fn append_encoded(&mut self, d: &Draft) -> (Link, String) {
        let encoded = canonical_json(&d.content);
        let content_hash = hex::encode(Sha256::digest(encoded.as_bytes()));
        let mut link = Link {
            seq: self.seq + 1,
            at: d.at,
            kind: d.kind.as_str().to_string(),
            case_id: d.case_id.clone(),
            run_id: d.run_id.clone(),
            actor: d.actor.clone(),
            script_hash: d.script_hash.clone(),
            content_hash,
            prev_hash: self.hash.clone(),
            hash: String::new(),
        };
        link.hash = link_hash(&link);
        self.seq = link.seq;
        self.hash = link.hash.clone();
        (link, encoded)
    }
}

/// The first thing wrong with a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("ledger entry {seq}: {problem}")]
pub struct ChainFault {
    /// The sequence number where the fault shows (the entry expected there).
    pub seq: i64,
    pub problem: String,
}

/// What a clean verification saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The number of the last entry checked (the whole chain's length, from genesis).
    pub entries: i64,
    pub erased: i64,
    pub head: Head,
    /// How many witnesses the chain was checked against (all matched).
    pub witnessed: usize,
}

/// A chain head posted outside the chain (the ledger witness, `[audit]`): entry `seq`
/// had `hash` when it was posted. Written `SEQ:HASH`, as the witness message gives it.
///
/// The chain alone proves only that it is consistent: whoever can write the database
/// past its triggers (a superuser) can rewrite an entry and every hash after it, and the
/// result verifies. It cannot also change what was posted in a chat room, so a rewritten
/// (or shortened) chain no longer matches its witnesses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Witness {
    pub seq: i64,
    pub hash: String,
}

impl std::str::FromStr for Witness {
    type Err = String;

    fn from_str(s: &str) -> Result<Witness, String> {
        let bad = |why: &str| {
            format!(
                "`{s}` is not a witness ({why}): write ENTRY:HASH as the ledger witness posted it, \
                e.g. 1234:{}",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            )
        };
        let (seq, hash) = s.trim().split_once(':').ok_or_else(|| bad("no `:`"))?;
        let seq =
            seq.trim().parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| bad("entries are numbered from 1"))?;
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("a hash is 64 hexadecimal digits"));
        }
        Ok(Witness { seq, hash })
    }
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// Content stored for entry `seq`, ahead of the chain's head: written around Wavelet.
pub fn content_ahead(seq: i64) -> ChainFault {
    ChainFault {
        seq,
        problem: "content is stored for this entry, ahead of the chain (written around Wavelet): Wavelet cannot \
                  append this entry until the database's owner removes that row (keep a copy for the investigation)"
            .into(),
    }
}

/// Walks entries in sequence order and checks each link, each content hash, and that
/// the chain ends at `head` (the stored chain head). Names the first bad entry.
///
/// Content may be missing only where a later `content.erased` entry (itself chained)
/// names the entry: an erasure nobody recorded is tampering.
pub fn verify(entries: impl IntoIterator<Item = StoredEntry>, head: &Head) -> Result<VerifyReport, ChainFault> {
    verify_witnessed(entries, head, &[])
}

/// [`verify`], and also that the chain passes through every witness: entry `seq` still
/// has the hash that was posted for it, and the chain has not been cut short of it.
pub fn verify_witnessed(
    entries: impl IntoIterator<Item = StoredEntry>,
    head: &Head,
    witnesses: &[Witness],
) -> Result<VerifyReport, ChainFault> {
    walk(Head::genesis(), entries.into_iter().collect(), Some(head), witnesses)
}

/// The entries after `start` (an entry known good), up to `head`: each links to the one
/// before it from `start` on, holds its content, and the last is `head`. Says nothing of
/// the entries before `start`. (All in memory; [`ChainCheck`] takes them a page at a time.)
pub fn verify_since(
    start: &Head,
    entries: impl IntoIterator<Item = StoredEntry>,
    head: &Head,
) -> Result<VerifyReport, ChainFault> {
    walk(start.clone(), entries.into_iter().collect(), Some(head), &[])
}

fn walk(
    start: Head,
    entries: Vec<StoredEntry>,
    head: Option<&Head>,
    witnesses: &[Witness],
) -> Result<VerifyReport, ChainFault> {
    let erasures = recorded_erasures(&entries);
    let mut check = ChainCheck::new(start, erasures, witnesses);
    for e in &entries {
        check.next(e)?;
    }
    check.finish(head)
}

/// The entries whose erasure `entries` record (`content.erased`): the only ones whose
/// content may be missing.
pub fn recorded_erasures(entries: &[StoredEntry]) -> std::collections::HashSet<i64> {
    entries
        .iter()
        .filter(|e| e.link.kind == EntryKind::ContentErased.as_str())
        .filter_map(|e| e.content.as_ref()?.get("seq")?.as_i64())
        .collect()
}

/// A chain checked one entry at a time, from a known entry on, so a long chain need not
/// be held in memory: give it the erasures recorded anywhere after `start` (see
/// [`recorded_erasures`]; an erasure is recorded after the entry it erases), feed it the
/// entries in order, then finish at the head.
pub struct ChainCheck<'w> {
    expect: Head,
    erasures: std::collections::HashSet<i64>,
    erased: i64,
    posted: std::collections::BTreeMap<i64, Vec<&'w str>>,
    witnesses: usize,
    /// The last entry that matched its witness: the chain is as posted up to there.
    matched: Option<i64>,
}

impl<'w> ChainCheck<'w> {
    pub fn new(start: Head, erasures: std::collections::HashSet<i64>, witnesses: &'w [Witness]) -> ChainCheck<'w> {
        let mut posted: std::collections::BTreeMap<i64, Vec<&str>> = std::collections::BTreeMap::new();
        for w in witnesses {
            posted.entry(w.seq).or_default().push(&w.hash);
        }
        ChainCheck { expect: start, erasures, erased: 0, posted, witnesses: witnesses.len(), matched: None }
    }

    /// The next entry: it must link to the one before and be unchanged.
    pub fn next(&mut self, e: &StoredEntry) -> Result<(), ChainFault> {
        let l = &e.link;
        let seq = self.expect.seq + 1;
        if l.seq != seq {
            let problem = if l.seq > seq {
                format!("missing: the chain jumps from entry {} to entry {}", self.expect.seq, l.seq)
            } else {
                format!("out of order: entry {} appears after entry {}", l.seq, self.expect.seq)
            };
            return Err(ChainFault { seq, problem });
        }
        if l.prev_hash != self.expect.hash {
            return Err(ChainFault { seq, problem: "does not link to the entry before it (prev_hash differs)".into() });
        }
        if link_hash(l) != l.hash {
            return Err(ChainFault {
                seq,
                problem: "its fields were changed after it was written (hash differs)".into(),
            });
        }
        match &e.content {
            Some(c) if content_hash(c) != l.content_hash => {
                return Err(ChainFault { seq, problem: "its content was changed after it was written".into() });
            }
            Some(_) => {}
            None if self.erasures.contains(&seq) => self.erased += 1,
            None => {
                return Err(ChainFault { seq, problem: "its content is gone without a recorded erasure".into() });
            }
        }
        if let Some(hashes) = self.posted.get(&seq) {
            if let Some(other) = hashes.iter().find(|h| **h != l.hash) {
                let since = match self.matched {
                    Some(m) => format!(" and after entry {m}, which matches its witness"),
                    None => String::new(),
                };
                return Err(ChainFault {
                    seq,
                    problem: format!(
                        "differs from its witness: {} was posted for it, the chain now has {}; the chain was \
                        rewritten at or before this entry{since}",
                        short(other),
                        short(&l.hash)
                    ),
                });
            }
            self.matched = Some(seq);
        }
        self.expect = Head { seq: l.seq, hash: l.hash.clone() };
        Ok(())
    }

    /// After the last entry: the chain must end at `head` (when given: the stored head)
    /// and reach every witness.
    pub fn finish(self, head: Option<&Head>) -> Result<VerifyReport, ChainFault> {
        let expect = self.expect;
        if let Some(head) = head
            && expect != *head
        {
            let problem = if head.seq > expect.seq {
                format!("missing: the chain ends at entry {} but its head says {}", expect.seq, head.seq)
            } else if head.seq < expect.seq {
                format!("added: entries after {} are beyond the recorded head", head.seq)
            } else {
                "the last entry differs from the recorded head".to_string()
            };
            return Err(ChainFault { seq: expect.seq.min(head.seq) + 1, problem });
        }
        if let Some((&seq, hashes)) = self.posted.range(expect.seq + 1..).next() {
            return Err(ChainFault {
                seq: expect.seq + 1,
                problem: format!(
                    "missing: a witness posted entry {seq} ({}) but the chain ends at entry {}; entries were removed",
                    short(hashes[0]),
                    expect.seq
                ),
            });
        }
        Ok(VerifyReport { entries: expect.seq, erased: self.erased, head: expect, witnessed: self.witnesses })
    }
}

/// The start of a hash, enough to tell two apart in a message (by characters: a hash
/// read from a tampered store may hold anything).
fn short(hash: &str) -> String {
    format!("{}…", hash.chars().take(16).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: usize) -> (Vec<StoredEntry>, Head) {
        let mut head = Head::genesis();
        let entries = (0..n)
            .map(|i| {
                let d = Draft {
                    at: Millis(1_000 + i as i64),
                    kind: EntryKind::QuestionAnswered,
                    case_id: Some("C-1".into()),
                    run_id: Some("R-1".into()),
                    actor: "alice".into(),
                    script_hash: None,
                    content: json!({ "answer": format!("answer {i}"), "step": i }),
                };
                StoredEntry { link: head.append(&d), content: Some(d.content) }
            })
            .collect();
        (entries, head)
    }

    /// The chained record of erasing entry `seq`'s content.
    fn erasure_record(seq: i64, reason: &str) -> Draft {
        Draft {
            at: Millis(9_000),
            kind: EntryKind::ContentErased,
            case_id: None,
            run_id: None,
            actor: "rey".into(),
            script_hash: None,
            content: json!({ "seq": seq, "reason": reason }),
        }
    }

    fn fault(entries: Vec<StoredEntry>, head: &Head) -> ChainFault {
        verify(entries, head).expect_err("tampering must be found")
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (e, head) = chain(5);
        let r = verify(e, &head).unwrap();
        assert_eq!(r.entries, 5);
        assert_eq!(verify(vec![], &Head::genesis()).unwrap().entries, 0);
    }

    /// The chain a superuser can make: entry `from`'s content changed and every hash from
    /// there on recomputed, head included. It verifies on its own.
    fn rewritten(entries: &[StoredEntry], from: usize) -> (Vec<StoredEntry>, Head) {
        let mut head = Head { seq: from as i64 - 1, hash: entries[from - 2].link.hash.clone() };
        let mut out = entries[..from - 1].to_vec();
        for (i, e) in entries[from - 1..].iter().enumerate() {
            let mut content = e.content.clone().unwrap();
            if i == 0 {
                content["answer"] = json!("a quieter version of events");
            }
            let d = Draft {
                at: e.link.at,
                kind: EntryKind::QuestionAnswered,
                case_id: e.link.case_id.clone(),
                run_id: e.link.run_id.clone(),
                actor: e.link.actor.clone(),
                script_hash: None,
                content: content.clone(),
            };
            out.push(StoredEntry { link: head.append(&d), content: Some(content) });
        }
        (out, head)
    }

    fn witness(e: &StoredEntry) -> Witness {
        Witness { seq: e.link.seq, hash: e.link.hash.clone() }
    }

    #[test]
    fn witnesses_catch_a_rewritten_chain_that_verifies_on_its_own() {
        let (e, head) = chain(8);
        let posted = [witness(&e[2]), witness(&e[5])];
        let r = verify_witnessed(e.clone(), &head, &posted).expect("the untouched chain passes its witnesses");
        assert_eq!((r.entries, r.witnessed), (8, 2));

        // Rewritten from entry 5: consistent, so it verifies without witnesses...
        let (forged, forged_head) = rewritten(&e, 5);
        assert_ne!(forged_head, head);
        assert!(verify(forged.clone(), &forged_head).is_ok());
        // ...but not against what was posted: entry 6's witness no longer matches, and
        // entry 3's still does, which bounds where the rewrite began.
        let f = verify_witnessed(forged.clone(), &forged_head, &posted).unwrap_err();
        assert_eq!(f.seq, 6, "{f}");
        assert!(f.problem.contains("differs from its witness"), "{f}");
        assert!(f.problem.contains("after entry 3"), "{f}");
        assert!(f.problem.contains(&e[5].link.hash[..16]), "names the posted hash: {f}");
        // Witnesses before the rewrite still pass: they only see what was posted.
        assert!(verify_witnessed(forged, &forged_head, &[witness(&e[2])]).is_ok());

        // Cut short, with the head moved back to match: the witness of entry 6 is past the end.
        let mut cut = e.clone();
        cut.truncate(4);
        let cut_head = Head { seq: 4, hash: cut[3].link.hash.clone() };
        assert!(verify(cut.clone(), &cut_head).is_ok());
        let f = verify_witnessed(cut, &cut_head, &posted).unwrap_err();
        assert_eq!(f.seq, 5, "{f}");
        assert!(f.problem.contains("a witness posted entry 6") && f.problem.contains("entries were removed"), "{f}");

        // Two witnesses posted for one entry must both match.
        let wrong = Witness { seq: 3, hash: "0".repeat(64) };
        let f = verify_witnessed(e.clone(), &head, &[witness(&e[2]), wrong]).unwrap_err();
        assert_eq!(f.seq, 3, "{f}");
        assert!(!f.problem.contains("after entry"), "no earlier witness matched: {f}");
    }

    #[test]
    fn a_chain_is_checked_from_a_known_entry_on() {
        let (e, head) = chain(8);
        let third = Head { seq: 3, hash: e[2].link.hash.clone() };
        let r = verify_since(&third, e[3..].to_vec(), &head).unwrap();
        assert_eq!(r.head, head);
        assert_eq!(verify_since(&head, vec![], &head).unwrap().head, head, "nothing since");
        let mut changed = e[3..].to_vec();
        changed[1].content = Some(json!({ "answer": "something else", "step": 4 }));
        assert_eq!(verify_since(&third, changed, &head).unwrap_err().seq, 5);
        // Whatever came before was rewritten: the first entry since no longer links to it.
        let moved = Head { seq: 3, hash: "0".repeat(64) };
        let f = verify_since(&moved, e[3..].to_vec(), &head).unwrap_err();
        assert_eq!(f.seq, 4, "{f}");
        assert!(f.problem.contains("prev_hash differs"), "{f}");
        // The last entries gone, the stored head left alone: the stretch ends short of it.
        let f = verify_since(&third, e[3..6].to_vec(), &head).unwrap_err();
        assert!(f.problem.contains("the chain ends at entry 6 but its head says 8"), "{f}");
        // Fed a page at a time, with the erasures recorded anywhere after the start.
        let mut erased = e.clone();
        erased[4].content = None;
        let mut h = head.clone();
        let record = erasure_record(5, "retention");
        erased.push(StoredEntry { link: h.append(&record), content: Some(record.content) });
        let mut check = ChainCheck::new(third.clone(), recorded_erasures(&erased[3..]), &[]);
        for page in erased[3..].chunks(2) {
            for entry in page {
                check.next(entry).unwrap();
            }
        }
        let r = check.finish(Some(&h)).unwrap();
        assert_eq!((r.entries, r.erased), (9, 1));
        let mut check = ChainCheck::new(third, Default::default(), &[]);
        let f = erased[3..].iter().try_for_each(|entry| check.next(entry)).unwrap_err();
        assert!(f.problem.contains("gone without a recorded erasure"), "{f}");
    }

    #[test]
    fn a_witness_is_read_as_entry_colon_hash_and_bad_ones_say_how_to_write_it() {
        let hash = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let w: Witness = format!(" 1234:{hash} ").parse().unwrap();
        assert_eq!(w, Witness { seq: 1234, hash: hash.to_ascii_lowercase() });
        assert_eq!(w.to_string().parse::<Witness>().unwrap(), w);
        for (bad, why) in [
            ("1234", "no `:`"),
            (&format!("0:{hash}")[..], "numbered from 1"),
            (&format!("-3:{hash}")[..], "numbered from 1"),
            (&format!("x:{hash}")[..], "numbered from 1"),
            ("12:abc", "64 hexadecimal digits"),
            (&format!("12:{}", "g".repeat(64))[..], "64 hexadecimal digits"),
            (&format!("12:{}", "é".repeat(32))[..], "64 hexadecimal digits"),
        ] {
            let e = bad.parse::<Witness>().unwrap_err();
            assert!(e.contains(why) && e.contains("write ENTRY:HASH"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_bad_entry() {
        let (e, head) = chain(5);

        let mut changed = e.clone();
        changed[2].content = Some(json!({ "answer": "something else", "step": 2 }));
        assert_eq!(fault(changed, &head).seq, 3);

        let mut relinked = e.clone();
        relinked[1].link.actor = "mallory".into();
        assert_eq!(fault(relinked, &head).seq, 2);

        let mut deleted = e.clone();
        deleted.remove(3);
        let f = fault(deleted, &head);
        assert_eq!(f.seq, 4);
        assert!(f.problem.contains("missing"), "{f}");

        let mut reordered = e.clone();
        reordered.swap(1, 2);
        assert_eq!(fault(reordered, &head).seq, 2);

        let mut tail_cut = e.clone();
        tail_cut.pop();
        assert_eq!(fault(tail_cut, &head).seq, 5);

        let (mut longer, _) = chain(6);
        longer.truncate(6);
        let f = fault(longer, &head);
        assert!(f.problem.contains("beyond the recorded head"), "{f}");

        // An inserted entry that was hashed properly still breaks the next link.
        let mut inserted = e.clone();
        let mut h = Head { seq: 2, hash: e[1].link.hash.clone() };
        let forged = Draft {
            at: Millis(5),
            kind: EntryKind::Share,
            case_id: None,
            run_id: None,
            actor: "mallory".into(),
            script_hash: None,
            content: json!({}),
        };
        let link = h.append(&forged);
        inserted.insert(2, StoredEntry { link, content: Some(forged.content) });
        assert_eq!(fault(inserted, &head).seq, 4);
    }

    #[test]
    fn erased_content_still_verifies_when_the_erasure_is_recorded() {
        let (mut e, mut head) = chain(3);
        e[1].content = None;
        let f = verify(e.clone(), &head).expect_err("an unrecorded erasure is tampering");
        assert_eq!(f.seq, 2, "{f}");
        let d = erasure_record(2, "court order");
        e.push(StoredEntry { link: head.append(&d), content: Some(d.content) });
        let r = verify(e, &head).unwrap();
        assert_eq!(r.erased, 1);
    }

    #[test]
    fn absent_and_present_optional_fields_hash_differently() {
        let (e, _) = chain(1);
        let mut l = e[0].link.clone();
        l.case_id = None;
        let none = link_hash(&l);
        l.case_id = Some(String::new());
        assert_ne!(none, link_hash(&l));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({ "b": 1, "a": { "d": [1, {"z": 0, "y": "é"}], "c": null } });
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#);
    }

    #[test]
    fn canonical_json_writes_strings_and_numbers_as_serde_json_does() {
        // Stored chains hash these bytes: they must stay what `to_string()` gave.
        let scalars = [
            json!("a\"b\\c\n\u{0}\u{202e}\u{200b}é"),
            json!(1.5),
            json!(-7),
            json!(u64::MAX),
            json!(null),
            json!(true),
        ];
        for v in scalars {
            assert_eq!(canonical_json(&v), v.to_string());
        }
        // Pinned, so that a change of serde_json's output shows here too.
        let pinned = [(json!(0.1), "0.1"), (json!(1e21), "1e+21"), (json!(-0.0), "-0.0"), (json!(1e-7), "1e-7")];
        for (v, text) in pinned {
            assert_eq!(canonical_json(&v), text);
        }
        assert_eq!(canonical_json(&json!("\u{1}\u{7f}\"\t")), "\"\\u0001\u{7f}\\\"\\t\"");
        let key = "k\"\u{1}é";
        assert_eq!(canonical_json(&json!({ key: [1, "x"] })), format!("{{{}:[1,\"x\"]}}", json!(key)));
    }

    #[test]
    fn link_hash_format_is_stable() {
        // A changed encoding breaks every stored chain: change these only on purpose.
        let link = Link {
            seq: 1,
            at: Millis(1_764_000_000_000),
            kind: "share".into(),
            case_id: Some("C-1".into()),
            run_id: Some("R-1".into()),
            actor: "alice".into(),
            script_hash: None,
            content_hash: content_hash(
                &json!({ "what": "New neglect concern C-1", "purpose": "protect a child from harm" }),
            ),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        assert_eq!(link.content_hash, "a4174e6560dbe885c73b5e8e42721c37a1576fe6bf2c431a95e909eb6a4fcf44");
        assert_eq!(link_hash(&link), "8b07b4b982bd746a750380ba5dbb4b52450cb843b6e06ac2f28dd042bb6d9097");
    }
}
