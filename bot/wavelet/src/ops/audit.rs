//! The reviewers' commands over the ledger: verify the chain, show a case's timeline,
//! export everything. Every show and export is itself recorded: who read what, when.

use crate::runtime::Runtime;
use serde_json::json;
use std::io::Write;
use wavelet_core::ledger::{AuditReadOf, Draft, Record, StoredEntry};
use wavelet_core::{Directory, roles, text};
use wavelet_store as store;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("`{0}` is not in the directory; --as takes the id of a reviewer or coordinator")]
    UnknownReader(String),
    #[error("`{0}` is neither a reviewer nor a coordinator, so may not read the ledger")]
    NotAllowed(String),
    #[error("no case `{0}`")]
    NoCase(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("could not write the output: {0}")]
    Io(#[from] std::io::Error),
}

fn check_reader(dir: &Directory, reader: &str) -> Result<(), AuditError> {
    let p = dir.person(reader).ok_or_else(|| AuditError::UnknownReader(reader.to_string()))?;
    if p.roles.iter().any(|r| r == roles::REVIEWER || r == roles::COORDINATOR) {
        Ok(())
    } else {
        Err(AuditError::NotAllowed(reader.to_string()))
    }
}

async fn record_read(rt: &Runtime, reader: &str, case_id: Option<&str>, what: AuditReadOf) -> store::Result<()> {
    rt.record(Draft::of(rt.now(), reader, Record::AuditRead(what)).about(case_id.map(str::to_string))).await
}

fn summary(e: &StoredEntry) -> String {
    let c = e.content.as_ref();
    let field = |k: &str| c.and_then(|c| c.get(k)).and_then(|v| v.as_str()).map(text::one_line);
    let detail = match e.link.kind.as_str() {
        "question.asked" => field("prompt").map(|p| format!("asked {}: {p}", field("to").unwrap_or_default())),
        "question.answered" => field("answer").map(|a| format!("answered: {a}")),
        "share" => Some(format!(
            "shared with {} ({}) for \"{}\", basis \"{}\": {}",
            field("group").unwrap_or_default(),
            c.and_then(|c| c.get("rooms")).map(|r| r.to_string()).unwrap_or_default(),
            field("purpose").unwrap_or_default(),
            field("lawful_basis").unwrap_or_default(),
            field("what").unwrap_or_default()
        )),
        "share.declined" => Some(format!(
            "decided not to share with {}: {} (consent: {})",
            field("group").unwrap_or_default(),
            field("reason").unwrap_or_default(),
            field("consent").unwrap_or_else(|| "not recorded".into())
        )),
        "case.note" => field("text").map(|t| format!("note: {t}")),
        "message.told" => field("text").map(|t| format!("told {}: {t}", field("to").unwrap_or_default())),
        _ => c.map(|c| text::one_line(&c.to_string())),
    };
    let detail = if e.content.is_none() { "(content erased)".to_string() } else { detail.unwrap_or_default() };
    format!("#{:<6} {}  {:<22} {:<10} {}", e.link.seq, e.link.at, e.link.kind, e.link.actor, detail)
}

/// Prints a case's timeline, after recording that `reader` read it.
pub async fn show_case(rt: &Runtime, reader: &str, case_id: &str, out: &mut dyn Write) -> Result<(), AuditError> {
    check_reader(rt.directory(), reader)?;
    let case = rt.store().case(case_id).await?.ok_or_else(|| AuditError::NoCase(case_id.to_string()))?;
    record_read(rt, reader, Some(case_id), AuditReadOf::case(case_id)).await?;
    writeln!(
        out,
        "Case {} — {} concern, risk {}, status {}, group {}, opened {} by run {}",
        case.id, case.category, case.risk, case.status, case.group_id, case.opened_at, case.run_id
    )?;
    for e in rt.store().ledger_for_case(case_id).await? {
        writeln!(out, "{}", summary(&e))?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

fn csv_field(s: &str) -> String {
    // Quote everything; defuse spreadsheet formulas.
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_string() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Writes every entry, after recording that `reader` exported the ledger.
pub async fn export(rt: &Runtime, reader: &str, format: Format, out: &mut dyn Write) -> Result<usize, AuditError> {
    check_reader(rt.directory(), reader)?;
    let fmt = match format {
        Format::Jsonl => "jsonl",
        Format::Csv => "csv",
    };
    record_read(rt, reader, None, AuditReadOf::export(fmt)).await?;
    if format == Format::Csv {
        writeln!(out, "seq,at,kind,case_id,run_id,actor,script_hash,content_hash,prev_hash,hash,content")?;
    }
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = rt.store().ledger_page(after, 5_000).await?;
        let Some(last) = page.last() else { break };
        after = last.link.seq;
        for e in page {
            n += 1;
            match format {
                Format::Jsonl => {
                    let l = &e.link;
                    let v = json!({
                        "seq": l.seq, "at": l.at.rfc3339(), "kind": l.kind, "case_id": l.case_id, "run_id": l.run_id,
                        "actor": l.actor, "script_hash": l.script_hash, "content_hash": l.content_hash,
                        "prev_hash": l.prev_hash, "hash": l.hash, "content": e.content,
                    });
                    writeln!(out, "{v}")?;
                }
                Format::Csv => {
                    let l = &e.link;
                    let fields = [
                        l.seq.to_string(),
                        l.at.rfc3339(),
                        l.kind.clone(),
                        l.case_id.clone().unwrap_or_default(),
                        l.run_id.clone().unwrap_or_default(),
                        l.actor.clone(),
                        l.script_hash.clone().unwrap_or_default(),
                        l.content_hash.clone(),
                        l.prev_hash.clone(),
                        l.hash.clone(),
                        e.content.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                    ];
                    let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(out, "{}", row.join(","))?;
                }
            }
        }
    }
    Ok(n)
}

/// Erases one entry's content, as `reader` (a reviewer or coordinator).
pub async fn erase(rt: &Runtime, reader: &str, seq: i64, reason: &str) -> Result<bool, AuditError> {
    check_reader(rt.directory(), reader)?;
    Ok(rt.store().erase(seq, reason, reader, rt.now()).await?)
}
