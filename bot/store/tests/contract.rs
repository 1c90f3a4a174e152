//! The store contract: one suite of behaviours every backend must have, run unchanged
//! against SQLite and PostgreSQL.
//!
//! Each contract case is an `async fn case(store: &Store)`; [`contract!`] turns it into a
//! `sqlite_case` and a `postgres_case` test, each on a fresh, empty store:
//!
//! * SQLite: a new file in a temp dir (`sqlite://PATH`).
//! * PostgreSQL: a new database `wavelet_test_*` on the server named by
//!   `WAVELET_TEST_DATABASE_URL` or `DATABASE_URL` (`scripts/test` starts a throwaway
//!   server and sets both), dropped again when the test ends, pass or fail. Without
//!   either variable the PostgreSQL tests fail: they never pass silently.
//!
//! Cases that act as an attacker (or test the database's own refusals) go around the
//! store with raw SQL on a separate sqlx connection made from the store's own connect
//! options; on PostgreSQL that user must be a superuser (the `scripts/test` one is).
//!
//! One file, over 800 lines, on purpose: every case runs on both backends from the one
//! `contract!` list, and a case is read beside the helpers it uses.

use serde_json::json;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wavelet_core::clock::ManualClock;
use wavelet_core::engine::{AnswerSpec, EffectKind, HistoryEntry, Wait};
use wavelet_core::ledger::{self, ChainFault, Draft, EntryKind, Head, StoredEntry};
use wavelet_core::{MessageBody, Millis, OutboundMessage, Platform, RoomRef};
use wavelet_store::{
    CaseRow, ClaimedMessage, Claimer, DueTimer, EscalationRow, EscalationStatus, RunRow, RunStatus, Store,
};

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh store and what it takes to throw it away again. Fields drop in order: the
/// store's pool first, then the SQLite temp dir or the PostgreSQL database.
struct TestDb {
    store: Store,
    _sqlite_dir: Option<tempfile::TempDir>,
    _pg_database: Option<PgDatabase>,
}

impl TestDb {
    async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir for the SQLite store");
                let url = format!("sqlite://{}", dir.path().join("wavelet.db").display());
                let store = Store::open(&url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
                TestDb { store, _sqlite_dir: Some(dir), _pg_database: None }
            }
            Backend::Postgres => {
                let server = postgres_server_url();
                let name = unique_database_name();
                let mut admin = PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {} to create a test database: {e}", redacted(&server)));
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("CREATE DATABASE {name} (the user must be allowed to create databases): {e}")
                    });
                let _ = admin.close().await;
                // From here on the database is dropped again, whatever happens.
                let guard = PgDatabase { server: server.clone(), name: name.clone() };
                let url = with_database(&server, &name);
                let store =
                    Store::open(&url).await.unwrap_or_else(|e| panic!("opening the store on database {name}: {e}"));
                assert_eq!(store.backend(), "postgres");
                TestDb { store, _sqlite_dir: None, _pg_database: Some(guard) }
            }
        }
    }

    async fn finish(self) {
        self.store.close().await;
    }
}

/// The PostgreSQL server the tests make their databases on. Fails the test when none is
/// configured: a PostgreSQL test that cannot run must not look like one that passed.
fn postgres_server_url() -> String {
    ["WAVELET_TEST_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| {
            panic!(
                "the PostgreSQL store tests need a PostgreSQL server: run them with `scripts/test` \
                 (it starts a throwaway PostgreSQL and sets DATABASE_URL), or set DATABASE_URL \
                 (or WAVELET_TEST_DATABASE_URL) to a server whose user may CREATE DATABASE"
            )
        })
}

fn unique_database_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("wavelet_test_{}_{:016x}", std::process::id(), h.finish())
}

/// `url` with its database (the path) replaced by `db`; the query string is kept.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority =
        base.find("://").map(|i| i + 3).unwrap_or_else(|| panic!("not a PostgreSQL URL: {}", redacted(url)));
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    format!("{}/{db}{query}", &base[..path])
}

fn redacted(url: &str) -> String {
    wavelet_store::redact(url)
}

/// Drops a test database (best effort, also when the test panicked). Runs on a thread of
/// its own with its own runtime, since `Drop` cannot await.
struct PgDatabase {
    server: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut c = PgConnection::connect(&server).await.map_err(|e| e.to_string())?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = c.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// For each `case: sqlite_case, postgres_case;` makes the two tests, each running
/// `case(&store)` on a fresh store of its backend.
macro_rules! contract {
    ($($case:ident: $sqlite:ident, $postgres:ident;)+) => {$(
        #[tokio::test]
        async fn $sqlite() {
            let db = TestDb::new(Backend::Sqlite).await;
            $case(&db.store).await;
            db.finish().await;
        }

        #[tokio::test]
        async fn $postgres() {
            let db = TestDb::new(Backend::Postgres).await;
            $case(&db.store).await;
            db.finish().await;
        }
    )+};
}

contract! {
    a_carried_on_transaction_sees_what_came_before_and_is_refused_if_anything_came_between:
        sqlite_a_carried_on_transaction_sees_what_came_before_and_is_refused_if_anything_came_between,
        postgres_a_carried_on_transaction_sees_what_came_before_and_is_refused_if_anything_came_between;
    a_carried_on_view_past_its_limit_keeps_what_was_written_and_prefetched:
        sqlite_a_carried_on_view_past_its_limit_keeps_what_was_written_and_prefetched,
        postgres_a_carried_on_view_past_its_limit_keeps_what_was_written_and_prefetched;
    inbox_records_each_event_once: sqlite_inbox_records_each_event_once, postgres_inbox_records_each_event_once;
    a_direct_room_is_recorded_per_platform_and_account_and_replaced:
        sqlite_a_direct_room_is_recorded_per_platform_and_account_and_replaced,
        postgres_a_direct_room_is_recorded_per_platform_and_account_and_replaced;
    a_commit_of_thousands_of_rows_keeps_every_row_in_order:
        sqlite_a_commit_of_thousands_of_rows_keeps_every_row_in_order,
        postgres_a_commit_of_thousands_of_rows_keeps_every_row_in_order;
    scripts_are_kept_by_hash_and_first_write_wins:
        sqlite_scripts_are_kept_by_hash_and_first_write_wins, postgres_scripts_are_kept_by_hash_and_first_write_wins;
    runs_round_trip_with_history_and_wait:
        sqlite_runs_round_trip_with_history_and_wait, postgres_runs_round_trip_with_history_and_wait;
    waiting_run_returns_the_oldest_wait_for_person_and_room:
        sqlite_waiting_run_returns_the_oldest_wait_for_person_and_room,
        postgres_waiting_run_returns_the_oldest_wait_for_person_and_room;
    counters_increase_monotonically_across_transactions:
        sqlite_counters_increase_monotonically_across_transactions,
        postgres_counters_increase_monotonically_across_transactions;
    case_counter_is_written_back_on_commit:
        sqlite_case_counter_is_written_back_on_commit, postgres_case_counter_is_written_back_on_commit;
    cases_are_inserted_once_and_closed_once:
        sqlite_cases_are_inserted_once_and_closed_once, postgres_cases_are_inserted_once_and_closed_once;
    outbox_enqueue_is_idempotent_by_key_and_delivery_is_recorded:
        sqlite_outbox_enqueue_is_idempotent_by_key_and_delivery_is_recorded,
        postgres_outbox_enqueue_is_idempotent_by_key_and_delivery_is_recorded;
    timers_fire_once: sqlite_timers_fire_once, postgres_timers_fire_once;
    messages_claimed_at_commit_are_handed_over_oldest_first:
        sqlite_messages_claimed_at_commit_are_handed_over_oldest_first,
        postgres_messages_claimed_at_commit_are_handed_over_oldest_first;
    rollback_loses_nothing_committed_and_keeps_nothing_uncommitted:
        sqlite_rollback_loses_nothing_committed_and_keeps_nothing_uncommitted,
        postgres_rollback_loses_nothing_committed_and_keeps_nothing_uncommitted;
    ledger_appends_chain_across_transactions_and_verify_passes:
        sqlite_ledger_appends_chain_across_transactions_and_verify_passes,
        postgres_ledger_appends_chain_across_transactions_and_verify_passes;
    concurrent_transactions_append_one_unbroken_chain:
        sqlite_concurrent_transactions_append_one_unbroken_chain,
        postgres_concurrent_transactions_append_one_unbroken_chain;
    ledger_refuses_update_and_delete_but_allows_erasure:
        sqlite_ledger_refuses_update_and_delete_but_allows_erasure,
        postgres_ledger_refuses_update_and_delete_but_allows_erasure;
    tampering_changed_actor_is_found: sqlite_tampering_changed_actor_is_found, postgres_tampering_changed_actor_is_found;
    tampering_changed_content_is_found:
        sqlite_tampering_changed_content_is_found, postgres_tampering_changed_content_is_found;
    tampering_unreadable_content_is_found:
        sqlite_tampering_unreadable_content_is_found, postgres_tampering_unreadable_content_is_found;
    tampering_deleted_middle_entry_is_found:
        sqlite_tampering_deleted_middle_entry_is_found, postgres_tampering_deleted_middle_entry_is_found;
    tampering_reordered_entries_are_found:
        sqlite_tampering_reordered_entries_are_found, postgres_tampering_reordered_entries_are_found;
    tampering_forged_entry_beyond_the_head_is_found:
        sqlite_tampering_forged_entry_beyond_the_head_is_found, postgres_tampering_forged_entry_beyond_the_head_is_found;
    tampering_deleted_last_entry_is_found:
        sqlite_tampering_deleted_last_entry_is_found, postgres_tampering_deleted_last_entry_is_found;
    tampering_deleted_content_row_is_not_taken_for_an_erasure:
        sqlite_tampering_deleted_content_row_is_not_taken_for_an_erasure,
        postgres_tampering_deleted_content_row_is_not_taken_for_an_erasure;
    tampering_rewritten_chain_is_found_by_its_witnesses:
        sqlite_tampering_rewritten_chain_is_found_by_its_witnesses,
        postgres_tampering_rewritten_chain_is_found_by_its_witnesses;
    tampering_content_without_an_entry_is_found:
        sqlite_tampering_content_without_an_entry_is_found, postgres_tampering_content_without_an_entry_is_found;
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const SCRIPT_HASH: &str = "5c1b7e0000000000000000000000000000000000000000000000000000000001";

fn room(s: &str) -> RoomRef {
    RoomRef::parse(s).unwrap_or_else(|| panic!("bad room {s}"))
}

fn answer_wait(step: usize, person: &str) -> Wait {
    Wait::Answer {
        step,
        person: person.into(),
        prompt: "Is the child safe right now?".into(),
        spec: AnswerSpec {
            choices: Some(vec!["yes".into(), "no".into()]),
            hint: Some("1 or 2".into()),
            ..Default::default()
        },
    }
}

/// A run started by alice in console:north. With `wait` = `(person, room, seq)` it waits
/// for that person's answer there.
fn run_row(id: &str, status: RunStatus, wait: Option<(&str, &str, i64)>) -> RunRow {
    RunRow {
        id: id.into(),
        workflow: "concern".into(),
        script_hash: SCRIPT_HASH.into(),
        status,
        starter: "alice".into(),
        group_id: "north".into(),
        room: room("console:north"),
        history: vec![HistoryEntry { kind: EffectKind::Now, fingerprint: "now()".into(), result: Some(json!(1_000)) }],
        wait: wait.map(|(person, _, _)| answer_wait(1, person)),
        wait_person: wait.map(|(person, _, _)| person.to_string()),
        wait_room: wait.map(|(_, r, _)| room(r)),
        wait_seq: wait.map(|(_, _, seq)| seq),
        wait_since: wait.map(|_| Millis(1_000)),
        error: None,
        created_at: Millis(1_000),
        updated_at: Millis(1_000),
    }
}

fn case_row(id: &str, run_id: &str) -> CaseRow {
    CaseRow {
        id: id.into(),
        run_id: run_id.into(),
        group_id: "north".into(),
        subject: "pupil in year 9".into(),
        category: "neglect".into(),
        risk: "high".into(),
        status: "open".into(),
        opened_at: Millis(2_000),
        closed_at: None,
    }
}

fn message(key: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        idempotency_key: key.into(),
        room: room("dm:console:bob"),
        person: Some("bob".into()),
        body: MessageBody::Text { text: text.into() },
    }
}

fn draft(at: i64, kind: EntryKind, case_id: Option<&str>, run_id: Option<&str>, content: serde_json::Value) -> Draft {
    Draft {
        at: Millis(at),
        kind,
        case_id: case_id.map(Into::into),
        run_id: run_id.map(Into::into),
        actor: "alice".into(),
        script_hash: run_id.map(|_| SCRIPT_HASH.to_string()),
        content,
    }
}

/// Saves the script the fixture runs use and commits.
async fn save_fixture_script(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    tx.save_script(SCRIPT_HASH, "concern", "ask(\"?\")", Millis(500)).await.unwrap();
    tx.commit().await.unwrap();
}

/// Saves the script and these runs, and commits.
async fn put_runs(store: &Store, runs: &[RunRow]) {
    save_fixture_script(store).await;
    let mut tx = store.begin().await.unwrap();
    for r in runs {
        tx.put_run(r).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Appends `n` entries over several transactions (sizes 1, 2, 3, 1, 2, 3, ...) and
/// checks the chain verifies; returns the entries as read back.
async fn build_chain(store: &Store, n: usize) -> Vec<StoredEntry> {
    let mut i = 0;
    let mut size = 1;
    while i < n {
        let mut tx = store.begin().await.unwrap();
        for _ in 0..size.min(n - i) {
            i += 1;
            let case = (i % 2 == 0).then_some("C-1");
            tx.append(draft(
                10_000 + i as i64,
                EntryKind::QuestionAnswered,
                case,
                Some("R-1"),
                json!({ "answer": format!("answer {i}"), "step": i }),
            ));
        }
        tx.commit().await.unwrap();
        size = size % 3 + 1;
    }
    let entries = store.ledger_page(0, 10_000).await.unwrap();
    let report =
        ledger::verify(entries.clone(), &store.ledger_head().await.unwrap()).expect("an untouched chain verifies");
    assert_eq!(report.entries, n as i64);
    entries
}

/// Verifies the stored chain against the stored head; the fault it must find.
async fn fault_after_tampering(store: &Store) -> ChainFault {
    let head = store.ledger_head().await.unwrap();
    let entries = store.ledger_page(0, 10_000).await.unwrap();
    ledger::verify(entries, &head).expect_err("verify must find the tampering")
}

// ---------------------------------------------------------------------------------------
// Raw SQL, around the store
// ---------------------------------------------------------------------------------------

/// A connection of its own to the store's database, made from the store's connect
/// options. On SQLite, foreign keys are off (an attacker would turn them off too).
enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Raw {
    async fn connect(store: &Store) -> Raw {
        if let Some(p) = store.sqlite_pool() {
            let opts = (*p.connect_options()).clone().foreign_keys(false);
            return Raw::Sqlite(SqliteConnection::connect_with(&opts).await.expect("a raw SQLite connection"));
        }
        let p = store.postgres_pool().expect("a store is SQLite or PostgreSQL");
        Raw::Postgres(PgConnection::connect_with(&p.connect_options()).await.expect("a raw PostgreSQL connection"))
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Raw::Postgres(_))
    }

    /// Runs one statement; the number of rows it changed.
    async fn exec(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_string()));
        Ok(match self {
            Raw::Sqlite(c) => q.execute(c).await?.rows_affected(),
            Raw::Postgres(c) => q.execute(c).await?.rows_affected(),
        })
    }

    /// Runs a statement that must succeed and change exactly `rows` rows.
    async fn must(&mut self, sql: &str, rows: u64) {
        let n = self.exec(sql).await.unwrap_or_else(|e| panic!("`{sql}` failed: {e}"));
        assert_eq!(n, rows, "`{sql}` changed {n} rows, expected {rows}");
    }

    /// Runs a statement that the database must refuse with a message containing `why`.
    async fn refused(&mut self, sql: &str, why: &str) {
        match self.exec(sql).await {
            Ok(n) => panic!("`{sql}` was allowed ({n} rows changed); it must be refused"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(why), "`{sql}` was refused, but not by the guard (expected `{why}`): {msg}");
            }
        }
    }

    /// Gets past the append-only guards the way an attacker with full access would.
    async fn disable_ledger_guards(&mut self) {
        if self.is_postgres() {
            self.must("ALTER TABLE ledger DISABLE TRIGGER ALL", 0).await;
            self.must("ALTER TABLE ledger_content DISABLE TRIGGER ALL", 0).await;
        } else {
            for t in ["ledger_no_update", "ledger_no_delete", "ledger_content_erase_only", "ledger_content_no_delete"] {
                self.must(&format!("DROP TRIGGER {t}"), 0).await;
            }
        }
    }

    async fn close(self) {
        let _ = match self {
            Raw::Sqlite(c) => c.close().await,
            Raw::Postgres(c) => c.close().await,
        };
    }
}

// ---------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------

async fn inbox_records_each_event_once(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e1", Millis(1)).await.unwrap(), "first sight of e1");
    assert!(!tx.record_inbox("console", "e1", Millis(2)).await.unwrap(), "e1 again, same transaction");
    assert!(
        tx.record_inbox("matrix", "e1", Millis(3)).await.unwrap(),
        "the same id on another platform is another event"
    );
    assert!(tx.record_inbox("console", "e2", Millis(4)).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert!(!tx.record_inbox("console", "e1", Millis(5)).await.unwrap(), "e1 redelivered after commit");
    assert!(!tx.record_inbox("matrix", "e1", Millis(5)).await.unwrap());
    assert!(!tx.record_inbox("console", "e2", Millis(5)).await.unwrap());
    assert!(tx.record_inbox("console", "e3", Millis(5)).await.unwrap());
    tx.commit().await.unwrap();
}

async fn a_direct_room_is_recorded_per_platform_and_account_and_replaced(store: &Store) {
    assert_eq!(store.direct_room(Platform::Matrix, "@alice:x").await.unwrap(), None, "nothing recorded yet");
    store.record_direct_room(Platform::Matrix, "@alice:x", "!one:x", Millis(1)).await.unwrap();
    store.record_direct_room(Platform::Matrix, "@bea:x", "!two:x", Millis(2)).await.unwrap();
    store.record_direct_room(Platform::Discord, "@alice:x", "3", Millis(3)).await.unwrap();
    assert_eq!(store.direct_room(Platform::Matrix, "@alice:x").await.unwrap().as_deref(), Some("!one:x"));
    assert_eq!(store.direct_room(Platform::Matrix, "@bea:x").await.unwrap().as_deref(), Some("!two:x"));
    assert_eq!(store.direct_room(Platform::Discord, "@alice:x").await.unwrap().as_deref(), Some("3"));
    // The person moved to another room of two: that one is theirs now.
    store.record_direct_room(Platform::Matrix, "@alice:x", "!three:x", Millis(4)).await.unwrap();
    assert_eq!(store.direct_room(Platform::Matrix, "@alice:x").await.unwrap().as_deref(), Some("!three:x"));
}

/// More rows of each kind than one SQLite statement takes (they are split) and than any
/// batch of the benchmark, with and without their optional values: every row is written,
/// with its values, and messages are numbered in the order they were queued.
async fn a_commit_of_thousands_of_rows_keeps_every_row_in_order(store: &Store) {
    const N: usize = 2_500;
    put_runs(store, &[]).await;
    let mut tx = store.begin().await.unwrap();
    let mut queued = Vec::new();
    for i in 0..N {
        assert!(tx.record_inbox("console", &format!("e{i}"), Millis(i as i64)).await.unwrap());
        let mut m = message(&format!("k{i}"), &format!("message {i}"));
        if i % 3 == 0 {
            m.person = None;
        }
        let run = (i % 2 == 0).then_some("R-1");
        tx.enqueue(&m, run, Millis(1_000)).await.unwrap();
        queued.push(m);
        let case = (i % 5 == 0).then_some("C-1");
        tx.append(draft(10_000 + i as i64, EntryKind::QuestionAnswered, case, run, json!({ "step": i })));
    }
    let runs: Vec<RunRow> = (0..N)
        .map(|i| {
            let wait = (i % 2 == 0).then_some(("bob", "dm:console:bob", i as i64));
            run_row(&format!("R-{}", i + 2), RunStatus::Waiting, wait)
        })
        .collect();
    for r in &runs {
        tx.put_run(r).await.unwrap();
    }
    // Each other kind of row, some with their optional values.
    let cases: Vec<CaseRow> = (0..3)
        .map(|i| CaseRow {
            closed_at: (i == 1).then_some(Millis(3_000)),
            ..case_row(&format!("C-{}", i + 2), &runs[i].id)
        })
        .collect();
    let escalations: Vec<EscalationRow> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| EscalationRow {
            id: format!("E-{i}"),
            case_id: c.id.clone(),
            policy: "prompt".into(),
            run_id: c.run_id.clone(),
            group_id: "north".into(),
            plan: Vec::new(),
            stage: i,
            status: EscalationStatus::Active,
            next_at: (i != 1).then_some(Millis(9_000 + i as i64)),
            notified: vec![format!("lead{i}")],
            started_at: Millis(2_000),
            acked_by: (i == 2).then(|| "lead2".to_string()),
            acked_at: (i == 2).then_some(Millis(4_000)),
        })
        .collect();
    for (c, e) in cases.iter().zip(&escalations) {
        tx.insert_case(c).await.unwrap();
        tx.insert_escalation(e).await.unwrap();
    }
    for (i, r) in runs.iter().take(3).enumerate() {
        tx.set_timer(&r.id, i as i64 + 1, Millis(5_000 + i as i64)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let due = store.pending_outbox(Millis(1_000), N as i64 + 1).await.unwrap();
    assert_eq!(due.len(), N, "every message queued");
    for (i, (p, m)) in due.iter().zip(&queued).enumerate() {
        assert_eq!(&p.message, m, "message {i}, in the order queued");
    }
    let mut tx = store.begin().await.unwrap();
    for i in [0, 999, 1_000, 1_001, N - 1] {
        assert!(!tx.record_inbox("console", &format!("e{i}"), Millis(0)).await.unwrap(), "event {i} was recorded");
    }
    drop(tx);
    let entries = store.ledger_page(0, N as i64 + 1).await.unwrap();
    assert_eq!(entries.len(), N);
    ledger::verify(entries.clone(), &store.ledger_head().await.unwrap()).expect("the chain verifies");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.link.case_id.as_deref(), (i % 5 == 0).then_some("C-1"), "entry {i}");
        assert_eq!(e.content, Some(json!({ "step": i })), "entry {i}");
    }
    for r in [&runs[0], &runs[1], &runs[N - 1]] {
        assert_eq!(store.run(&r.id).await.unwrap().as_ref(), Some(r));
    }
    let mut tx = store.begin().await.unwrap();
    for (c, e) in cases.iter().zip(&escalations) {
        assert_eq!(store.case(&c.id).await.unwrap().as_ref(), Some(c));
        assert_eq!(tx.escalation(&e.id).await.unwrap().as_ref(), Some(e));
    }
    drop(tx);
    let timers = store.due_timers(Millis(10_000), 10).await.unwrap();
    let expected: Vec<DueTimer> = (0..3)
        .map(|i| DueTimer { run_id: runs[i].id.clone(), step: i as i64 + 1, due_at: Millis(5_000 + i as i64) })
        .collect();
    assert_eq!(timers, expected);
}

async fn scripts_are_kept_by_hash_and_first_write_wins(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.script_source("h1").await.unwrap(), None);
    tx.save_script("h1", "concern", "tell(\"one\")", Millis(1)).await.unwrap();
    tx.save_script("h1", "renamed", "tell(\"two\")", Millis(2)).await.unwrap();
    assert_eq!(tx.script_source("h1").await.unwrap(), Some(("concern".into(), "tell(\"one\")".into())));
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.script_source("h1").await.unwrap(), Some(("concern".into(), "tell(\"one\")".into())));
    assert_eq!(tx.script_source("h2").await.unwrap(), None);
}

async fn runs_round_trip_with_history_and_wait(store: &Store) {
    save_fixture_script(store).await;
    let mut run = run_row("R-1", RunStatus::Waiting, Some(("bob", "dm:console:bob", 1)));
    run.history.push(HistoryEntry {
        kind: EffectKind::Ask,
        fingerprint: "ask(bob, \"Is the child safe right now?\")".into(),
        result: None,
    });
    run.wait = Some(answer_wait(1, "bob"));

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.run("R-1").await.unwrap(), None);
    tx.put_run(&run).await.unwrap();
    assert_eq!(tx.run("R-1").await.unwrap().as_ref(), Some(&run), "read back inside the transaction");
    tx.commit().await.unwrap();
    assert_eq!(store.run("R-1").await.unwrap().as_ref(), Some(&run), "read back after commit");

    // The update every step makes: new history, wait, status.
    let mut updated = run.clone();
    updated.history[1].result = Some(json!({ "answer": "no", "choice": 2 }));
    updated.history.push(HistoryEntry { kind: EffectKind::Sleep, fingerprint: "sleep(3600000)".into(), result: None });
    updated.wait = Some(Wait::Timer { step: 2, until: Millis(3_601_000) });
    updated.wait_person = None;
    updated.wait_room = None;
    updated.wait_seq = None;
    updated.updated_at = Millis(2_000);
    let mut tx = store.begin().await.unwrap();
    tx.put_run(&updated).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.run("R-1").await.unwrap().as_ref(), Some(&updated));

    let mut failed = updated.clone();
    failed.status = RunStatus::Failed;
    failed.wait = None;
    failed.error = Some("script error: `x` is not defined (line 3)".into());
    failed.updated_at = Millis(3_000);
    let mut tx = store.begin().await.unwrap();
    tx.put_run(&failed).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.run("R-1").await.unwrap().as_ref(), Some(&failed));
    assert_eq!(store.run("R-2").await.unwrap(), None);
    assert_eq!(store.run_counts().await.unwrap(), vec![("failed".to_string(), 1)]);
}

async fn waiting_run_returns_the_oldest_wait_for_person_and_room(store: &Store) {
    let bob = room("dm:console:bob");
    // Inserted out of order, so neither insertion order nor text order gives the answer.
    let second = run_row("R-b", RunStatus::Waiting, Some(("bob", "dm:console:bob", 2)));
    let tenth = run_row("R-a", RunStatus::Waiting, Some(("bob", "dm:console:bob", 10)));
    let first = run_row("R-c", RunStatus::Waiting, Some(("bob", "dm:console:bob", 1)));
    let elsewhere = run_row("R-d", RunStatus::Waiting, Some(("bob", "console:north", 0)));
    let carol = run_row("R-e", RunStatus::Waiting, Some(("carol", "dm:console:bob", 0)));
    let mut finished = run_row("R-f", RunStatus::Finished, Some(("bob", "dm:console:bob", 0)));
    finished.wait = None;
    put_runs(store, &[second.clone(), tenth.clone(), first.clone(), elsewhere, carol, finished]).await;

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.waiting_run("bob", &bob).await.unwrap().as_ref(), Some(&first));
    let other = tx.waiting_run_other("bob", &bob, "R-c").await.unwrap().unwrap();
    assert!(other == "R-b" || other == "R-a", "another waiting run on bob in his DM, got {other}");
    assert_eq!(tx.waiting_run("dave", &bob).await.unwrap(), None);
    assert_eq!(tx.waiting_run("bob", &room("console:south")).await.unwrap(), None);
    assert_eq!(tx.waiting_run_other("carol", &bob, "R-e").await.unwrap(), None, "carol's only wait is R-e itself");

    // The first wait is answered: the run moves on and stops waiting.
    let mut answered = first.clone();
    answered.status = RunStatus::Finished;
    answered.wait = None;
    answered.wait_person = None;
    answered.wait_room = None;
    answered.wait_seq = None;
    tx.put_run(&answered).await.unwrap();
    assert_eq!(tx.waiting_run("bob", &bob).await.unwrap().as_ref(), Some(&second), "2 comes before 10");
    assert_eq!(tx.waiting_run_other("bob", &bob, "R-b").await.unwrap().as_deref(), Some("R-a"));
    assert_eq!(tx.waiting_run_other("bob", &bob, "R-a").await.unwrap().as_deref(), Some("R-b"));
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let mut cancelled = second.clone();
    cancelled.status = RunStatus::Cancelled;
    tx.put_run(&cancelled).await.unwrap();
    assert_eq!(tx.waiting_run("bob", &bob).await.unwrap().as_ref(), Some(&tenth), "only waiting runs count");
    assert_eq!(tx.waiting_run_other("bob", &bob, "R-a").await.unwrap(), None);
    tx.commit().await.unwrap();
}

async fn counters_increase_monotonically_across_transactions(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.next_number("run").await.unwrap(), 1);
    assert_eq!(tx.next_number("run").await.unwrap(), 2);
    assert_eq!(tx.next_number("wait").await.unwrap(), 1, "each counter counts on its own");
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.next_number("run").await.unwrap(), 3);
    assert_eq!(tx.next_number("wait").await.unwrap(), 2);
    assert_eq!(tx.next_number("case").await.unwrap(), 1);
    assert!(tx.next_number("no-such-counter").await.is_err(), "an unknown counter is an error, not a number");
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.next_number("run").await.unwrap(), 3, "numbers taken in a rolled-back transaction come back");
    tx.commit().await.unwrap();

    // Concurrent writers each get a number of their own, with no gaps.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let n = tx.next_number("run").await.unwrap();
                tokio::task::yield_now().await;
                tx.commit().await.unwrap();
                n
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (4..=11).collect::<Vec<i64>>());
}

async fn case_counter_is_written_back_on_commit(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("case").await.unwrap(), 0);
    tx.set_counter("case", 5);
    assert_eq!(tx.counter("case").await.unwrap(), 5, "the transaction sees its own counter");
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("case").await.unwrap(), 5, "written back on commit");
    tx.set_counter("case", 9);
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("case").await.unwrap(), 5, "not written back without commit");
    tx.set_counter("case", 6);
    tx.set_counter("case", 7);
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("case").await.unwrap(), 7, "the last value set wins");
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.next_number("case").await.unwrap(), 8, "it is the same counter `case` numbers come from");
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("case").await.unwrap(), 8);
}

async fn cases_are_inserted_once_and_closed_once(store: &Store) {
    put_runs(store, &[run_row("R-1", RunStatus::Waiting, None)]).await;
    let case = case_row("C-1", "R-1");
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.case("C-1").await.unwrap().as_ref(), Some(&case));
    assert_eq!(store.case("C-2").await.unwrap(), None);

    // Writes go to the database at commit: the commit is refused and leaves nothing.
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case).await.unwrap();
    assert!(tx.commit().await.is_err(), "a case id is used once");

    let mut tx = store.begin().await.unwrap();
    assert!(tx.close_case("C-1", Millis(9_000)).await.unwrap());
    assert!(!tx.close_case("C-1", Millis(9_500)).await.unwrap(), "closing a closed case is a no-op");
    assert!(!tx.close_case("C-2", Millis(9_500)).await.unwrap(), "no such case");
    tx.commit().await.unwrap();
    let closed = store.case("C-1").await.unwrap().unwrap();
    assert_eq!(closed, CaseRow { status: "closed".into(), closed_at: Some(Millis(9_000)), ..case });
}

async fn outbox_enqueue_is_idempotent_by_key_and_delivery_is_recorded(store: &Store) {
    let first = message("R-1/2/0", "Thank you, the lead has been told.");
    let choice = OutboundMessage {
        idempotency_key: "R-1/3/0".into(),
        room: room("console:north"),
        person: None,
        body: MessageBody::Choice { prompt: "How urgent?".into(), options: vec!["now".into(), "today".into()] },
    };

    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&first, Some("R-1"), Millis(100)).await.unwrap();
    tx.enqueue(&message("R-1/2/0", "a retry"), Some("R-1"), Millis(150)).await.unwrap();
    tx.enqueue(&choice, None, Millis(200)).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&first, Some("R-1"), Millis(300)).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(store.pending_outbox(Millis(99), 10).await.unwrap(), vec![], "nothing due yet");
    let due = store.pending_outbox(Millis(150), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].message, first, "the first enqueue's message is the one kept");
    assert_eq!(due[0].attempts, 0);
    let due = store.pending_outbox(Millis(1_000), 10).await.unwrap();
    assert_eq!(due.iter().map(|p| &p.message).collect::<Vec<_>>(), vec![&first, &choice], "oldest first");
    assert_eq!(store.pending_outbox(Millis(1_000), 1).await.unwrap().len(), 1, "limit");
    let (id1, id2) = (due[0].id, due[1].id);
    assert_ne!(id1, id2);
    assert_eq!(store.next_outbox_due(&[Platform::Console]).await.unwrap(), Some(Millis(100)));

    // A failed attempt pushes the message back to its retry time.
    store.mark_failed(id1, "matrix: 502 Bad Gateway", Millis(5_000)).await.unwrap();
    let due = store.pending_outbox(Millis(4_999), 10).await.unwrap();
    assert_eq!(due.iter().map(|p| p.id).collect::<Vec<_>>(), vec![id2]);
    assert_eq!(store.next_outbox_due(&[Platform::Console]).await.unwrap(), Some(Millis(200)));
    let due = store.pending_outbox(Millis(5_000), 10).await.unwrap();
    assert_eq!(due.iter().map(|p| (p.id, p.attempts)).collect::<Vec<_>>(), vec![(id1, 1), (id2, 0)]);

    // Delivered messages leave the queue.
    store.mark_delivered(id2, Millis(300)).await.unwrap();
    assert_eq!(store.next_outbox_due(&[Platform::Console]).await.unwrap(), Some(Millis(5_000)));
    let due = store.pending_outbox(Millis(10_000), 10).await.unwrap();
    assert_eq!(due.iter().map(|p| (p.id, p.attempts)).collect::<Vec<_>>(), vec![(id1, 1)]);
    store.mark_delivered(id1, Millis(5_001)).await.unwrap();
    assert_eq!(store.pending_outbox(Millis(i64::MAX), 10).await.unwrap(), vec![]);
    assert_eq!(store.next_outbox_due(&[Platform::Console]).await.unwrap(), None);

    // Delivered is still "queued before": the key is not sent twice.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&first, Some("R-1"), Millis(6_000)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.pending_outbox(Millis(i64::MAX), 10).await.unwrap(), vec![]);
}

fn message_in(key: &str, room_ref: &str) -> OutboundMessage {
    OutboundMessage { room: room(room_ref), ..message(key, "a question") }
}

async fn enqueue_and_commit(store: &Store, messages: &[OutboundMessage], at: i64) {
    let mut tx = store.begin().await.unwrap();
    for m in messages {
        tx.enqueue(m, Some("R-1"), Millis(at)).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn keys(claimed: &[ClaimedMessage]) -> Vec<&str> {
    claimed.iter().map(|c| c.message.idempotency_key.as_str()).collect()
}

async fn messages_claimed_at_commit_are_handed_over_oldest_first(store: &Store) {
    let clock = Arc::new(ManualClock::new(Millis(1_000)));
    let all = [Platform::Matrix, Platform::Discord];
    let lease = std::time::Duration::from_secs(60);
    // Queued before anyone claims at commit: it waits for a delivery pass's claim.
    enqueue_and_commit(store, &[message_in("old", "dm:matrix:@bob:x")], 500).await;
    assert!(store.take_handed().await.is_empty());

    store.claim_at_commit(Some(Claimer {
        owner: "me".into(),
        platforms: vec![Platform::Matrix],
        clock: clock.clone(),
        lease,
    }));
    // A commit that queues for Matrix claims what is due there, the older message too,
    // and leaves Discord's to whoever delivers there.
    enqueue_and_commit(store, &[message_in("new", "dm:matrix:@bob:x"), message_in("d", "discord:1")], 1_000).await;
    let handed = store.take_handed().await;
    assert_eq!(keys(&handed), vec!["old", "new"], "oldest first");
    assert!(
        handed[0].id < handed[1].id && handed.iter().all(|c| c.attempts == 0 && c.run_id.as_deref() == Some("R-1"))
    );
    assert!(store.take_handed().await.is_empty(), "handed over once");
    let others = store.claim_outbox("other", &all, Millis(1_000), lease, 10).await.unwrap();
    assert_eq!(keys(&others), vec!["d"], "the handed messages are claimed: nobody else takes them");
    // Claimed messages are next due when their claims run out; other platforms' do not count.
    assert_eq!(store.next_outbox_due(&[Platform::Matrix]).await.unwrap(), Some(Millis(61_000)));
    assert_eq!(store.next_outbox_due(&all).await.unwrap(), Some(Millis(61_000)));
    assert_eq!(store.next_outbox_due(&[Platform::Console]).await.unwrap(), None);
    assert_eq!(store.next_outbox_due(&[]).await.unwrap(), None);

    // A commit that queues nothing for Matrix claims nothing there, though a Matrix
    // message is due and unclaimed; one rolled back hands nothing.
    let old = handed[0].id;
    store.release_claim(old).await.unwrap();
    enqueue_and_commit(store, &[message_in("d2", "discord:1")], 1_000).await;
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&message_in("lost", "matrix:!room:x"), None, Millis(1_000)).await.unwrap();
    drop(tx);
    assert!(store.take_handed().await.is_empty());
    // A key delivered is not queued, nor claimed, again.
    store.mark_delivered(old, Millis(1_000)).await.unwrap();
    enqueue_and_commit(store, &[message_in("old", "dm:matrix:@bob:x")], 1_000).await;
    assert!(store.take_handed().await.is_empty());

    // A claim of this process that ran out is not claimed again at commit (a pass may
    // still be sending it); a delivery pass takes it.
    clock.advance(lease + std::time::Duration::from_millis(1));
    enqueue_and_commit(store, &[message_in("newer", "dm:matrix:@bob:x")], 61_001).await;
    assert_eq!(keys(&store.take_handed().await), vec!["newer"], "not \"new\" again");
    let later = Millis(61_001);
    let mine = store.claim_outbox("me", &[Platform::Matrix], later, lease, 10).await.unwrap();
    assert_eq!(keys(&mine), vec!["new"]);

    // A claim handed over is an ordinary claim: if it is never delivered it runs out and
    // another process sends the message.
    let later = later.plus(lease).plus(std::time::Duration::from_millis(1));
    let others = store.claim_outbox("other", &all, later, lease, 10).await.unwrap();
    assert_eq!(keys(&others), vec!["new", "d", "d2", "newer"]);

    // Stopped: a commit claims nothing.
    store.claim_at_commit(None);
    enqueue_and_commit(store, &[message_in("after", "matrix:!room:x")], 2_000).await;
    assert!(store.take_handed().await.is_empty());
    let mine = store.claim_outbox("me", &all, later.plus(lease), lease, 10).await.unwrap();
    assert_eq!(keys(&mine), vec!["after"]);

    // A platform that asked us to slow down is left out of claiming at commit.
    store.claim_at_commit(Some(Claimer { owner: "me".into(), platforms: all.to_vec(), clock: clock.clone(), lease }));
    store.stop_claiming_for(Platform::Matrix);
    enqueue_and_commit(store, &[message_in("slowed", "matrix:!room:x"), message_in("d3", "discord:1")], 2_000).await;
    assert_eq!(keys(&store.take_handed().await), vec!["d3"]);
    store.claim_at_commit(None);
}

async fn timers_fire_once(store: &Store) {
    put_runs(store, &[run_row("R-1", RunStatus::Waiting, None), run_row("R-2", RunStatus::Waiting, None)]).await;
    assert_eq!(store.next_timer_due().await.unwrap(), None);

    let mut tx = store.begin().await.unwrap();
    tx.set_timer("R-1", 3, Millis(2_000)).await.unwrap();
    tx.set_timer("R-2", 1, Millis(1_000)).await.unwrap();
    tx.set_timer("R-1", 4, Millis(3_000)).await.unwrap();
    tx.commit().await.unwrap();

    let t = |run: &str, step, due| DueTimer { run_id: run.into(), step, due_at: Millis(due) };
    assert_eq!(store.next_timer_due().await.unwrap(), Some(Millis(1_000)));
    assert_eq!(store.due_timers(Millis(999), 10).await.unwrap(), vec![]);
    assert_eq!(store.due_timers(Millis(1_000), 10).await.unwrap(), vec![t("R-2", 1, 1_000)]);
    assert_eq!(store.due_timers(Millis(2_500), 10).await.unwrap(), vec![t("R-2", 1, 1_000), t("R-1", 3, 2_000)]);
    assert_eq!(store.due_timers(Millis(2_500), 1).await.unwrap(), vec![t("R-2", 1, 1_000)], "limit");

    let mut tx = store.begin().await.unwrap();
    assert!(tx.take_timer("R-2", 1).await.unwrap(), "the first taker fires it");
    assert!(!tx.take_timer("R-2", 1).await.unwrap(), "and only once");
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.take_timer("R-2", 1).await.unwrap(), "still gone after commit");
    assert!(!tx.take_timer("R-1", 9).await.unwrap(), "never set");
    tx.commit().await.unwrap();
    assert_eq!(store.due_timers(Millis(10_000), 10).await.unwrap(), vec![t("R-1", 3, 2_000), t("R-1", 4, 3_000)]);
    assert_eq!(store.next_timer_due().await.unwrap(), Some(Millis(2_000)));

    // Two workers racing for the same timer: exactly one fires it.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let took = tx.take_timer("R-1", 3).await.unwrap();
                tokio::task::yield_now().await;
                tx.commit().await.unwrap();
                took
            })
        })
        .collect();
    let mut fired = 0;
    for task in tasks {
        fired += usize::from(task.await.unwrap());
    }
    assert_eq!(fired, 1, "a timer fires once, however many workers race for it");
    assert_eq!(store.due_timers(Millis(10_000), 10).await.unwrap(), vec![t("R-1", 4, 3_000)]);
}

/// `Tx::commit_and_continue`: the transaction carried on sees what the one before wrote
/// (runs, waits, counters, recorded events, the chain head) without reading the database,
/// and commits after it into one unbroken chain. If the one before fails, or anything
/// else commits in between, it is refused when it takes the lock and keeps nothing.
async fn a_carried_on_transaction_sees_what_came_before_and_is_refused_if_anything_came_between(store: &Store) {
    save_fixture_script(store).await;
    let run = run_row("R-1", RunStatus::Waiting, Some(("bob", "dm:console:bob", 1)));
    let bob = room("dm:console:bob");
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e1", Millis(1)).await.unwrap());
    assert_eq!(tx.next_number("run").await.unwrap(), 1);
    assert_eq!(tx.waiting_run("bob", &bob).await.unwrap(), None);
    tx.put_run(&run).await.unwrap();
    tx.append(draft(10, EntryKind::RunStarted, None, Some("R-1"), json!({ "workflow": "concern" })));
    let (commit, mut next) = tx.commit_and_continue();
    // The first has not begun to commit (its future is not polled yet), so a read that
    // needed the database would wait for ever: the carried-on view answers these alone.
    let view = async {
        assert!(!next.record_inbox("console", "e1", Millis(2)).await.unwrap(), "e1 is recorded");
        let waiting = next.waiting_run("bob", &bob).await.unwrap();
        assert_eq!(waiting.map(|r| r.id).as_deref(), Some("R-1"));
        assert_eq!(next.next_number("run").await.unwrap(), 2);
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), view).await.expect("answered from the view");
    let mut finished = run.clone();
    finished.status = RunStatus::Finished;
    finished.wait_person = None;
    finished.wait_room = None;
    finished.wait_seq = None;
    next.put_run(&finished).await.unwrap();
    next.append(draft(11, EntryKind::RunFinished, None, Some("R-1"), json!({})));
    let carried_before = store.carried_on();
    commit.await.unwrap();
    next.commit().await.unwrap();
    assert_eq!(store.carried_on(), carried_before + 1, "the carried-on transaction took the lock");
    assert_eq!(store.run("R-1").await.unwrap().unwrap().status, RunStatus::Finished);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.counter("run").await.unwrap(), 2, "both counter writes landed");
    drop(tx);
    let head = store.ledger_head().await.unwrap();
    assert_eq!(head.seq, 2);
    ledger::verify(store.ledger_page(0, 100).await.unwrap(), &head).expect("one unbroken chain");

    // Something else commits in between: refused, nothing kept.
    let mut tx = store.begin().await.unwrap();
    tx.append(draft(12, EntryKind::CaseNote, None, Some("R-1"), json!({ "n": 1 })));
    let (commit, mut next) = tx.commit_and_continue();
    next.append(draft(13, EntryKind::CaseNote, None, Some("R-1"), json!({ "n": 2 })));
    commit.await.unwrap();
    let other = store.begin().await.unwrap();
    other.commit().await.unwrap();
    // Not in view, so it needs the database: refused when it takes the lock.
    let refused = next.record_inbox("console", "e2", Millis(3)).await.expect_err("something committed in between");
    assert!(matches!(refused, wavelet_store::Error::Superseded), "{refused}");
    let refused = next.commit().await.expect_err("still refused");
    assert!(matches!(refused, wavelet_store::Error::Superseded), "{refused}");
    let head = store.ledger_head().await.unwrap();
    assert_eq!(head.seq, 3, "only the first's entry");
    ledger::verify(store.ledger_page(0, 100).await.unwrap(), &head).expect("still one unbroken chain");
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e2", Millis(4)).await.unwrap(), "e2 was not kept");
    drop(tx);

    // The one before fails (a case id taken already): the carried-on one is refused too.
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case_row("C-1", "R-1")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case_row("C-1", "R-1")).await.unwrap();
    tx.append(draft(14, EntryKind::CaseNote, None, Some("R-1"), json!({ "n": 3 })));
    let (commit, mut next) = tx.commit_and_continue();
    next.append(draft(15, EntryKind::CaseNote, None, Some("R-1"), json!({ "n": 4 })));
    commit.await.expect_err("the case id is taken");
    let refused = next.commit().await.expect_err("the one before failed");
    assert!(matches!(refused, wavelet_store::Error::Superseded), "{refused}");
    let head = store.ledger_head().await.unwrap();
    assert_eq!(head.seq, 3, "neither kept an entry");
    ledger::verify(store.ledger_page(0, 100).await.unwrap(), &head).expect("still one unbroken chain");
}

/// A carried-on transaction whose view would pass the store's limit keeps only what the
/// one before wrote and what its last prefetch read (for the next batch); what it drops
/// is committed, and is read from the database once the one before has committed. Under
/// the limit it keeps everything. The same for one narrowed from a transaction that was
/// itself carried on.
async fn a_carried_on_view_past_its_limit_keeps_what_was_written_and_prefetched(store: &Store) {
    save_fixture_script(store).await;
    let bob = room("dm:console:bob");
    let carol = room("dm:console:carol");
    let dave = room("dm:console:dave");
    let mut tx = store.begin().await.unwrap();
    tx.put_run(&run_row("R-1", RunStatus::Waiting, Some(("bob", "dm:console:bob", 1)))).await.unwrap();
    tx.put_run(&run_row("R-2", RunStatus::Waiting, Some(("carol", "dm:console:carol", 2)))).await.unwrap();
    tx.commit().await.unwrap();
    for (limit, kept) in [(None, 4), (Some(0), 3)] {
        if let Some(limit) = limit {
            store.set_max_carried(limit);
        }
        let mut tx = store.begin().await.unwrap();
        // Read only: bob's and carol's waits. Written: an event and a run waiting on dave.
        assert_eq!(tx.waiting_run("bob", &bob).await.unwrap().map(|r| r.id).as_deref(), Some("R-1"));
        assert_eq!(tx.waiting_run("carol", &carol).await.unwrap().map(|r| r.id).as_deref(), Some("R-2"));
        let event = format!("e-{kept}");
        assert!(tx.record_inbox("console", &event, Millis(1)).await.unwrap());
        let r3 = format!("R-3-{kept}");
        tx.put_run(&run_row(&r3, RunStatus::Waiting, Some(("dave", "dm:console:dave", 3)))).await.unwrap();
        // The next batch: bob answers.
        let next_event = format!("next-{kept}");
        tx.prefetch(&[("console".into(), next_event.clone())], &["bob".into()]).await.unwrap();
        let (commit, mut next) = tx.commit_and_continue();
        // Runs R-1, R-3 (and R-2 when not narrowed) and the recorded event.
        assert_eq!(next.view_size(), kept, "limit {limit:?}");
        // The first has not begun to commit: these are answered from the view alone.
        let view = async {
            assert!(!next.record_inbox("console", &event, Millis(2)).await.unwrap(), "written before: recorded");
            assert!(next.record_inbox("console", &next_event, Millis(2)).await.unwrap(), "prefetched: new");
            let waiting = next.waiting_run("bob", &bob).await.unwrap();
            assert_eq!(waiting.map(|r| r.id).as_deref(), Some("R-1"));
            assert_eq!(next.run(&r3).await.unwrap().map(|r| r.id), Some(r3.clone()));
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), view).await.expect("answered from the view");
        commit.await.unwrap();
        // What was dropped, or never prefetched, comes from the database, as committed.
        assert_eq!(next.waiting_run("carol", &carol).await.unwrap().map(|r| r.id).as_deref(), Some("R-2"));
        assert_eq!(next.waiting_run("dave", &dave).await.unwrap().map(|r| r.id), Some(r3.clone()));
        next.put_run(&run_row(&r3, RunStatus::Finished, None)).await.unwrap();
        next.commit().await.unwrap();
        assert_eq!(store.run(&r3).await.unwrap().unwrap().status, RunStatus::Finished);
    }
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.record_inbox("console", "next-3", Millis(3)).await.unwrap(), "the carried-on one's event is kept");
    drop(tx);

    // Narrowing one that is itself carried on: its prefetch waits for the one before to
    // commit, so what it drops (that one's writes too) is read back as committed.
    let erin = room("dm:console:erin");
    let mut tx1 = store.begin().await.unwrap();
    tx1.put_run(&run_row("R-5", RunStatus::Waiting, Some(("erin", "dm:console:erin", 5)))).await.unwrap();
    assert!(tx1.record_inbox("console", "e-5", Millis(4)).await.unwrap());
    let (commit1, mut tx2) = tx1.commit_and_continue();
    let committing = tokio::spawn(commit1);
    // The next batch: e-5 delivered again, and bob.
    tx2.prefetch(&[("console".into(), "e-5".into())], &["bob".into()]).await.unwrap();
    committing.await.unwrap().unwrap();
    let (commit2, mut tx3) = tx2.commit_and_continue();
    assert_eq!(tx3.view_size(), 1, "bob's run only: tx2 wrote nothing, and tx1's writes are committed");
    let view = async {
        assert!(!tx3.record_inbox("console", "e-5", Millis(5)).await.unwrap(), "prefetched: recorded before");
        assert_eq!(tx3.waiting_run("bob", &bob).await.unwrap().map(|r| r.id).as_deref(), Some("R-1"));
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), view).await.expect("answered from the view");
    commit2.await.unwrap();
    assert_eq!(tx3.waiting_run("erin", &erin).await.unwrap().map(|r| r.id).as_deref(), Some("R-5"));
    tx3.commit().await.unwrap();
}

async fn rollback_loses_nothing_committed_and_keeps_nothing_uncommitted(store: &Store) {
    // Committed state.
    let run = run_row("R-1", RunStatus::Waiting, Some(("bob", "dm:console:bob", 1)));
    save_fixture_script(store).await;
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e1", Millis(1)).await.unwrap());
    assert_eq!(tx.next_number("run").await.unwrap(), 1);
    tx.put_run(&run).await.unwrap();
    tx.insert_case(&case_row("C-1", "R-1")).await.unwrap();
    tx.enqueue(&message("k1", "hello"), Some("R-1"), Millis(10)).await.unwrap();
    tx.set_timer("R-1", 1, Millis(100)).await.unwrap();
    tx.append(draft(10, EntryKind::RunStarted, None, Some("R-1"), json!({ "workflow": "concern" })));
    tx.append(draft(11, EntryKind::CaseOpened, Some("C-1"), Some("R-1"), json!({ "risk": "high" })));
    tx.counter("case").await.unwrap();
    tx.set_counter("case", 1);
    tx.commit().await.unwrap();
    let head = store.ledger_head().await.unwrap();
    let ledger = store.ledger_page(0, 100).await.unwrap();
    assert_eq!(head.seq, 2);

    // A transaction that touches everything and is dropped without commit.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e2", Millis(2)).await.unwrap());
    assert_eq!(tx.next_number("run").await.unwrap(), 2);
    tx.save_script("h-new", "other", "tell(\"x\")", Millis(2)).await.unwrap();
    let mut changed = run.clone();
    changed.status = RunStatus::Cancelled;
    tx.put_run(&changed).await.unwrap();
    tx.put_run(&run_row("R-2", RunStatus::Waiting, None)).await.unwrap();
    tx.insert_case(&case_row("C-2", "R-2")).await.unwrap();
    assert!(tx.close_case("C-1", Millis(20)).await.unwrap());
    tx.enqueue(&message("k2", "never sent"), Some("R-2"), Millis(20)).await.unwrap();
    tx.set_timer("R-2", 1, Millis(50)).await.unwrap();
    assert!(tx.take_timer("R-1", 1).await.unwrap());
    tx.append(draft(20, EntryKind::CaseClosed, Some("C-1"), Some("R-1"), json!({ "reason": "dropped" })));
    tx.counter("case").await.unwrap();
    tx.set_counter("case", 2);
    assert_eq!(tx.run("R-1").await.unwrap().as_ref(), Some(&changed), "visible inside the transaction");
    drop(tx);

    // Also a transaction whose commit fails part-way (a duplicate case, written after the
    // inbox row and the runs).
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "e3", Millis(3)).await.unwrap());
    tx.put_run(&run_row("R-3", RunStatus::Waiting, None)).await.unwrap();
    tx.insert_case(&case_row("C-1", "R-1")).await.unwrap();
    assert!(tx.commit().await.is_err());
    assert!(store.run("R-3").await.unwrap().is_none());

    // Nothing of either is visible; everything committed is.
    assert_eq!(store.run("R-1").await.unwrap().as_ref(), Some(&run));
    assert_eq!(store.run("R-2").await.unwrap(), None);
    assert_eq!(store.case("C-1").await.unwrap().map(|c| c.status), Some("open".to_string()));
    assert_eq!(store.case("C-2").await.unwrap(), None);
    let pending = store.pending_outbox(Millis(i64::MAX), 10).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.message.idempotency_key.as_str()).collect::<Vec<_>>(), vec!["k1"]);
    let t = DueTimer { run_id: "R-1".into(), step: 1, due_at: Millis(100) };
    assert_eq!(store.due_timers(Millis(i64::MAX), 10).await.unwrap(), vec![t]);
    assert_eq!(store.ledger_head().await.unwrap(), head, "the head did not move");
    assert_eq!(store.ledger_page(0, 100).await.unwrap(), ledger);
    assert_eq!(store.run_counts().await.unwrap(), vec![("waiting".to_string(), 1)]);

    let mut tx = store.begin().await.unwrap();
    assert!(!tx.record_inbox("console", "e1", Millis(4)).await.unwrap(), "committed inbox kept");
    assert!(tx.record_inbox("console", "e2", Millis(4)).await.unwrap(), "rolled-back inbox gone");
    assert!(tx.record_inbox("console", "e3", Millis(4)).await.unwrap(), "failed transaction's inbox gone");
    assert_eq!(tx.next_number("run").await.unwrap(), 2);
    assert_eq!(tx.counter("case").await.unwrap(), 1);
    assert_eq!(tx.script_source("h-new").await.unwrap(), None);
    assert!(tx.script_source(SCRIPT_HASH).await.unwrap().is_some());
    // The next append chains onto the committed head, not the dropped entry.
    let link = tx.append(draft(30, EntryKind::CaseNote, Some("C-1"), None, json!({ "text": "after" })));
    assert_eq!((link.seq, link.prev_hash.as_str()), (3, head.hash.as_str()));
    tx.commit().await.unwrap();
    let report = ledger::verify(store.ledger_page(0, 100).await.unwrap(), &store.ledger_head().await.unwrap()).unwrap();
    assert_eq!(report.entries, 3);
}

async fn ledger_appends_chain_across_transactions_and_verify_passes(store: &Store) {
    assert_eq!(store.ledger_head().await.unwrap(), Head::genesis());
    assert_eq!(ledger::verify(store.ledger_page(0, 10).await.unwrap(), &Head::genesis()).unwrap().entries, 0);
    put_runs(store, &[run_row("R-1", RunStatus::Waiting, None), run_row("R-2", RunStatus::Waiting, None)]).await;

    let mut drafts = Vec::new();
    let mut links = Vec::new();
    // Transaction 1: two entries.
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case_row("C-1", "R-1")).await.unwrap();
    for d in [
        draft(1_000, EntryKind::RunStarted, None, Some("R-1"), json!({ "workflow": "concern", "by": "alice" })),
        draft(1_001, EntryKind::CaseOpened, Some("C-1"), Some("R-1"), json!({ "z": 1, "a": { "é": [1, 2, null] } })),
    ] {
        links.push(tx.append(d.clone()));
        drafts.push(d);
    }
    tx.commit().await.unwrap();
    assert_eq!(store.ledger_head().await.unwrap().seq, 2);
    // Transaction 2: one entry for another run and case.
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case_row("C-2", "R-2")).await.unwrap();
    let d = draft(1_002, EntryKind::RunStarted, None, Some("R-2"), json!({ "workflow": "concern" }));
    links.push(tx.append(d.clone()));
    drafts.push(d);
    tx.commit().await.unwrap();
    // Transaction 3: no entries; the head stays.
    let head = store.ledger_head().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record_inbox("console", "e1", Millis(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.ledger_head().await.unwrap(), head);
    // Transaction 4: three entries, one about a case without a run (a reviewer's note).
    let mut tx = store.begin().await.unwrap();
    for d in [
        draft(1_003, EntryKind::CaseOpened, Some("C-2"), Some("R-2"), json!({ "risk": "low" })),
        draft(1_004, EntryKind::CaseNote, Some("C-1"), None, json!({ "text": "spoke to the school" })),
        draft(1_005, EntryKind::AuditRead, None, None, json!({ "what": "ledger" })),
    ] {
        links.push(tx.append(d.clone()));
        drafts.push(d);
    }
    tx.commit().await.unwrap();

    let head = store.ledger_head().await.unwrap();
    assert_eq!(head, Head { seq: 6, hash: links[5].hash.clone() });
    let entries = store.ledger_page(0, 10_000).await.unwrap();
    assert_eq!(entries.len(), 6);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.link, links[i], "entry {} as stored is the link append returned", i + 1);
        assert_eq!(e.content.as_ref(), Some(&drafts[i].content), "entry {} content round-trips", i + 1);
        assert_eq!(e.link.seq, i as i64 + 1);
    }
    let report = ledger::verify(entries.clone(), &head).expect("the chain verifies");
    assert_eq!((report.entries, report.erased, &report.head), (6, 0, &head));

    // Paging.
    let page = store.ledger_page(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.link.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(page, entries[2..5].to_vec());
    assert_eq!(store.ledger_page(6, 10).await.unwrap(), vec![]);

    // By case: its own entries and those of the run that opened it.
    let seqs = |v: Vec<StoredEntry>| v.into_iter().map(|e| e.link.seq).collect::<Vec<_>>();
    let c1 = store.ledger_for_case("C-1").await.unwrap();
    assert_eq!(c1, vec![entries[0].clone(), entries[1].clone(), entries[4].clone()]);
    assert_eq!(seqs(store.ledger_for_case("C-2").await.unwrap()), vec![3, 4]);
    assert_eq!(seqs(store.ledger_for_case("C-9").await.unwrap()), Vec::<i64>::new());

    // A big step: more entries than one insert statement takes.
    let mut tx = store.begin().await.unwrap();
    for i in 0..123 {
        tx.append(draft(2_000 + i, EntryKind::MessageSent, Some("C-1"), Some("R-1"), json!({ "n": i })));
    }
    tx.commit().await.unwrap();
    let head = store.ledger_head().await.unwrap();
    assert_eq!(head.seq, 129);
    let all = store.ledger_page(0, 10_000).await.unwrap();
    assert_eq!(ledger::verify(all, &head).expect("still verifies").entries, 129);
    assert_eq!(store.ledger_for_case("C-1").await.unwrap().len(), 3 + 123);
}

async fn concurrent_transactions_append_one_unbroken_chain(store: &Store) {
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..3 {
                    let mut tx = store.begin().await.unwrap();
                    for k in 0..2 {
                        tx.append(draft(
                            w * 100 + round * 10 + k,
                            EntryKind::Share,
                            None,
                            None,
                            json!({ "w": w, "k": k }),
                        ));
                        tokio::task::yield_now().await;
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let head = store.ledger_head().await.unwrap();
    let report = ledger::verify(store.ledger_page(0, 10_000).await.unwrap(), &head).expect("one unbroken chain");
    assert_eq!(report.entries, 8 * 3 * 2);
}

async fn ledger_refuses_update_and_delete_but_allows_erasure(store: &Store) {
    let before = build_chain(store, 4).await;
    let mut raw = Raw::connect(store).await;
    let pg = raw.is_postgres();

    let ledger_refusals = [
        "UPDATE ledger SET actor = 'x'",
        "UPDATE ledger SET actor = 'x' WHERE seq = 2",
        "UPDATE ledger SET seq = 40 WHERE seq = 4",
        "DELETE FROM ledger",
        "DELETE FROM ledger WHERE seq = 4",
        "INSERT INTO ledger (seq, at, kind, actor, content_hash, prev_hash, hash) VALUES (2, 0, 'x', 'mallory', 'x', 'x', 'x') \
         ON CONFLICT (seq) DO UPDATE SET actor = excluded.actor",
    ];
    let content_refusals = [
        "UPDATE ledger_content SET content = '{\"answer\":\"forged\",\"step\":2}' WHERE seq = 2",
        "UPDATE ledger_content SET content = NULL WHERE seq = 2",
        "UPDATE ledger_content SET content = NULL, erased_at = 1 WHERE seq = 2",
        "UPDATE ledger_content SET seq = 40, content = NULL, erased_at = 1, erasure_reason = 'x' WHERE seq = 4",
        "DELETE FROM ledger_content",
        "DELETE FROM ledger_content WHERE seq = 4",
        "INSERT INTO ledger_content (seq, content) VALUES (2, '{}') ON CONFLICT (seq) DO UPDATE SET content = excluded.content",
    ];
    // Every content guard says this (the rest of the message names the operation).
    let content_why = "ledger content can only be erased";

    // PostgreSQL: also as a replica (which skips ordinary triggers and foreign keys).
    let roles: &[Option<&str>] = if pg { &[None, Some("replica")] } else { &[None] };
    for role in roles {
        if let Some(role) = role {
            raw.must(&format!("SET session_replication_role = {role}"), 0).await;
        }
        for sql in ledger_refusals {
            raw.refused(sql, "the Wavelet ledger is append-only").await;
        }
        for sql in content_refusals {
            raw.refused(sql, content_why).await;
        }
        if pg {
            raw.refused("TRUNCATE ledger", "the Wavelet ledger is append-only").await;
            raw.refused("TRUNCATE ledger CASCADE", "the Wavelet ledger is append-only").await;
            raw.refused("TRUNCATE ledger, ledger_content", "the Wavelet ledger is append-only").await;
            raw.refused("TRUNCATE ledger_content", "the Wavelet ledger is append-only").await;
        }
    }
    if pg {
        raw.must("RESET session_replication_role", 0).await;
    }
    assert_eq!(store.ledger_page(0, 100).await.unwrap(), before, "nothing changed");

    // A lawful erasure: content gone, time and reason recorded, the chain still whole.
    raw.must(
        "UPDATE ledger_content SET content = NULL, erased_at = 1, erasure_reason = 'court order' WHERE seq = 2",
        1,
    )
    .await;
    // And once erased, it stays erased.
    let unerase = "UPDATE ledger_content SET content = '{\"answer\":\"answer 2\",\"step\":2}', \
                   erased_at = NULL, erasure_reason = NULL WHERE seq = 2";
    raw.refused(unerase, content_why).await;
    raw.close().await;

    let after = store.ledger_page(0, 100).await.unwrap();
    assert_eq!(after[1].content, None);
    assert_eq!(after[1].link, before[1].link, "the link stays");
    for i in [0, 2, 3] {
        assert_eq!(after[i], before[i]);
    }
    // Erased in the database alone, nobody recorded it: that is tampering.
    let fault = ledger::verify(after, &store.ledger_head().await.unwrap()).expect_err("an unrecorded erasure");
    assert_eq!(fault.seq, 2, "{fault}");

    // The chained record of the erasure makes it lawful, and appending goes on.
    let mut tx = store.begin().await.unwrap();
    tx.append(draft(20_000, EntryKind::ContentErased, None, None, json!({ "seq": 2, "reason": "court order" })));
    tx.commit().await.unwrap();
    let report = ledger::verify(store.ledger_page(0, 100).await.unwrap(), &store.ledger_head().await.unwrap()).unwrap();
    assert_eq!((report.entries, report.erased), (5, 1));

    // Store::erase does both in one transaction, and only once.
    assert!(store.erase(3, "retention period ended", "rey", Millis(30_000)).await.unwrap());
    assert!(!store.erase(3, "again", "rey", Millis(31_000)).await.unwrap(), "already erased");
    assert!(!store.erase(99, "no such entry", "rey", Millis(31_000)).await.unwrap());
    // The record of an erasure is what makes the gap lawful: it cannot be erased.
    let erasure_record = store.ledger_head().await.unwrap().seq;
    assert!(store.erase(erasure_record, "tidy up", "rey", Millis(32_000)).await.is_err());
    let report = ledger::verify(store.ledger_page(0, 100).await.unwrap(), &store.ledger_head().await.unwrap()).unwrap();
    assert_eq!((report.entries, report.erased), (6, 2));
}

// Tampering, as an attacker who gets past the database's guards. Each starts from a fresh
// six-entry chain that verifies; verify must then name the first bad entry.

async fn tamper(store: &Store, statements: &[(&str, u64)]) -> ChainFault {
    build_chain(store, 6).await;
    let mut raw = Raw::connect(store).await;
    raw.disable_ledger_guards().await;
    for (sql, rows) in statements {
        raw.must(sql, *rows).await;
    }
    raw.close().await;
    fault_after_tampering(store).await
}

async fn tampering_changed_actor_is_found(store: &Store) {
    let f = tamper(store, &[("UPDATE ledger SET actor = 'mallory' WHERE seq = 3", 1)]).await;
    assert_eq!(f.seq, 3, "{f}");
    assert!(f.problem.contains("hash differs"), "{f}");
}

async fn tampering_changed_content_is_found(store: &Store) {
    let f = tamper(
        store,
        &[("UPDATE ledger_content SET content = '{\"answer\":\"all fine\",\"step\":4}' WHERE seq = 4", 1)],
    )
    .await;
    assert_eq!(f.seq, 4, "{f}");
    assert!(f.problem.contains("content was changed"), "{f}");
}

async fn tampering_unreadable_content_is_found(store: &Store) {
    let f = tamper(store, &[("UPDATE ledger_content SET content = 'not json at all' WHERE seq = 5", 1)]).await;
    assert_eq!(f.seq, 5, "{f}");
    assert!(f.problem.contains("content was changed"), "{f}");
}

async fn tampering_deleted_middle_entry_is_found(store: &Store) {
    let f = tamper(store, &[("DELETE FROM ledger_content WHERE seq = 3", 1), ("DELETE FROM ledger WHERE seq = 3", 1)])
        .await;
    assert_eq!(f.seq, 3, "{f}");
    assert!(f.problem.contains("missing"), "{f}");
}

async fn tampering_reordered_entries_are_found(store: &Store) {
    // Entries 3 and 4 swap places; each keeps its content.
    let mut swap = Vec::new();
    for table in ["ledger", "ledger_content"] {
        swap.push(format!("UPDATE {table} SET seq = -1 WHERE seq = 3"));
        swap.push(format!("UPDATE {table} SET seq = 3 WHERE seq = 4"));
        swap.push(format!("UPDATE {table} SET seq = 4 WHERE seq = -1"));
    }
    let statements: Vec<(&str, u64)> = swap.iter().map(|s| (s.as_str(), 1)).collect();
    let f = tamper(store, &statements).await;
    let entries = store.ledger_page(0, 100).await.unwrap();
    assert_eq!(entries[2].content, Some(json!({ "answer": "answer 4", "step": 4 })), "the swap happened");
    assert_eq!(f.seq, 3, "{f}");
    assert!(f.problem.contains("prev_hash differs"), "{f}");
}

async fn tampering_forged_entry_beyond_the_head_is_found(store: &Store) {
    build_chain(store, 6).await;
    let head = store.ledger_head().await.unwrap();
    // Properly chained and hashed after entry 6, but the recorded head is left alone.
    let forged = draft(99_999, EntryKind::CaseClosed, Some("C-1"), None, json!({ "reason": "nothing to see" }));
    let l = head.clone().append(&forged);
    let content = ledger::canonical_json(&forged.content);
    let insert_link = format!(
        "INSERT INTO ledger (seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash) \
         VALUES ({}, {}, '{}', 'C-1', NULL, '{}', NULL, '{}', '{}', '{}')",
        l.seq, l.at.0, l.kind, l.actor, l.content_hash, l.prev_hash, l.hash
    );
    let insert_content = format!("INSERT INTO ledger_content (seq, content) VALUES ({}, '{content}')", l.seq);
    // Inserting needs no guard to be disabled: appends are what the ledger allows.
    let mut raw = Raw::connect(store).await;
    raw.must(&insert_link, 1).await;
    raw.must(&insert_content, 1).await;
    raw.close().await;

    let entries = store.ledger_page(0, 100).await.unwrap();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[6].link, l);
    let f = fault_after_tampering(store).await;
    assert_eq!(f.seq, 7, "{f}");
    assert!(f.problem.contains("beyond the recorded head"), "{f}");
    // Without the head check the forgery would pass: every link is sound.
    assert!(ledger::verify(entries, &Head { seq: 7, hash: l.hash.clone() }).is_ok());
}

async fn tampering_deleted_last_entry_is_found(store: &Store) {
    let f = tamper(store, &[("DELETE FROM ledger_content WHERE seq = 6", 1), ("DELETE FROM ledger WHERE seq = 6", 1)])
        .await;
    assert_eq!(f.seq, 6, "{f}");
    assert!(f.problem.contains("missing"), "{f}");
}

/// Content planted for an entry the chain does not hold (ahead of the head, so the entry
/// Wavelet appends there later could not be written either): the chain itself is sound,
/// and `verify` names the content's entry.
async fn tampering_content_without_an_entry_is_found(store: &Store) {
    build_chain(store, 6).await;
    assert!(store.verify(&[]).await.unwrap().is_ok(), "sound before");
    let mut raw = Raw::connect(store).await;
    raw.must("INSERT INTO ledger_content (seq, content) VALUES (9, '{\"answer\":\"planted\"}')", 1).await;
    raw.close().await;
    assert_eq!(store.ledger_page(0, 100).await.unwrap().len(), 6, "the chain reads as before");
    let f = store.verify(&[]).await.unwrap().expect_err("verify must find the planted content");
    assert_eq!(f.seq, 9, "{f}");
    assert!(f.problem.contains("ahead of the chain") && f.problem.contains("owner removes"), "{f}");
    // Wavelet does not take the planted row for entry 9's content: that append fails.
    let mut tx = store.begin().await.unwrap();
    tx.append(draft(20_007, EntryKind::QuestionAnswered, None, None, json!({ "step": 7 })));
    tx.append(draft(20_008, EntryKind::QuestionAnswered, None, None, json!({ "step": 8 })));
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.append(draft(20_009, EntryKind::QuestionAnswered, None, None, json!({ "step": 9 })));
    assert!(tx.commit().await.is_err(), "entry 9 cannot be appended over planted content");
    assert_eq!(store.ledger_head().await.unwrap().seq, 8);
    assert_eq!(store.verify(&[]).await.unwrap().expect_err("still found").seq, 9);
}

async fn tampering_deleted_content_row_is_not_taken_for_an_erasure(store: &Store) {
    let f = tamper(store, &[("DELETE FROM ledger_content WHERE seq = 4", 1)]).await;
    assert_eq!(f.seq, 4, "{f}");
    assert!(f.problem.contains("content was changed"), "{f}");
}

/// The attack the chain alone cannot see: entry 4's content changed and every hash from
/// there on recomputed, the head moved to match. Only the witnesses posted before (entries
/// 3 and 5) tell.
async fn tampering_rewritten_chain_is_found_by_its_witnesses(store: &Store) {
    let before = build_chain(store, 6).await;
    let posted: Vec<ledger::Witness> = [&before[2], &before[4]]
        .iter()
        .map(|e| ledger::Witness { seq: e.link.seq, hash: e.link.hash.clone() })
        .collect();
    let ok = store.verify(&posted).await.unwrap().expect("untouched, it matches");
    assert_eq!(ok.witnessed, 2);

    let mut head = Head { seq: 3, hash: before[2].link.hash.clone() };
    let mut statements = Vec::new();
    for e in &before[3..] {
        let mut content = e.content.clone().unwrap();
        if e.link.seq == 4 {
            content["answer"] = json!("nothing happened");
            statements.push(format!(
                "UPDATE ledger_content SET content = '{}' WHERE seq = 4",
                ledger::canonical_json(&content)
            ));
        }
        let l = head.append(&Draft {
            at: e.link.at,
            kind: EntryKind::QuestionAnswered,
            case_id: e.link.case_id.clone(),
            run_id: e.link.run_id.clone(),
            actor: e.link.actor.clone(),
            script_hash: e.link.script_hash.clone(),
            content,
        });
        statements.push(format!(
            "UPDATE ledger SET content_hash = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}",
            l.content_hash, l.prev_hash, l.hash, l.seq
        ));
    }
    statements.push(format!("UPDATE ledger_head SET seq = {}, hash = '{}' WHERE id = 1", head.seq, head.hash));
    let mut raw = Raw::connect(store).await;
    raw.disable_ledger_guards().await;
    for sql in &statements {
        raw.must(sql, 1).await;
    }
    raw.close().await;

    let rewritten = store.ledger_page(0, 100).await.unwrap();
    assert_eq!(rewritten[3].content.as_ref().unwrap()["answer"], "nothing happened", "the rewrite happened");
    assert!(store.verify(&[]).await.unwrap().is_ok(), "on its own the rewritten chain verifies");
    let f = store.verify(&posted).await.unwrap().expect_err("its witness tells");
    assert_eq!(f.seq, 5, "{f}");
    assert!(f.problem.contains("differs from its witness") && f.problem.contains("after entry 3"), "{f}");
}

/// The file of a SQLite store.
fn sqlite_file(store: &Store) -> std::path::PathBuf {
    store.sqlite_pool().expect("a SQLite store").connect_options().get_filename().to_path_buf()
}

/// A SQLite file Wavelet creates has the page size it commits fastest with, and a
/// write-ahead log (see `SQLITE_PAGE_SIZE` in store.rs).
#[tokio::test]
async fn a_new_sqlite_store_has_16_kib_pages_and_a_write_ahead_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let file = sqlite_file(&db.store);
    // Read from the file's header, not through a connection (which would set them itself):
    // the page size (bytes 16-17, big-endian), and the file format versions for the
    // write-ahead log (bytes 18 and 19: 2, where a rollback journal has 1).
    let header = std::fs::read(&file).unwrap();
    assert_eq!(&header[16..20], &[0x40, 0x00, 2, 2], "16 KiB pages and the write-ahead log");
    db.finish().await;
}

/// After a transaction larger than the write-ahead log's limit, the log is cut back to the
/// limit by the next commit once it has been checkpointed, instead of keeping its largest
/// size until Wavelet stops.
#[tokio::test]
async fn a_sqlite_log_grown_by_a_large_transaction_is_cut_back_to_its_limit() {
    let db = TestDb::new(Backend::Sqlite).await;
    let file = sqlite_file(&db.store);
    let log = file.with_file_name(format!("{}-wal", file.file_name().unwrap().to_string_lossy()));
    let limit = wavelet_store::SQLITE_LOG_LIMIT;
    // One transaction of limit + 8 MiB, made by SQLite itself (no copies in this process).
    let rows = (limit + 8 * 1024 * 1024) / 100_000;
    let mut raw = Raw::connect(&db.store).await;
    raw.exec(&format!(
        "CREATE TABLE scratch (b BLOB); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
         INSERT INTO scratch SELECT randomblob(100000) FROM n"
    ))
    .await
    .unwrap();
    drop(raw);
    let grown = std::fs::metadata(&log).unwrap().len();
    assert!(grown > limit, "the log grew past its limit: {grown}");
    // That commit checkpointed the log; Wavelet's next one starts it again and cuts it back.
    let mut tx = db.store.begin().await.unwrap();
    assert!(tx.record_inbox("console", "after", Millis(2)).await.unwrap());
    tx.commit().await.unwrap();
    let now = std::fs::metadata(&log).unwrap().len();
    assert!(now <= limit, "the log is back within {limit} bytes: {now}");
    db.finish().await;
}

/// SQLite only: `REPLACE` deletes the old row without firing DELETE triggers (unless
/// `recursive_triggers` is on), so it must be refused by a trigger of its own.
#[tokio::test]
async fn sqlite_ledger_refuses_insert_or_replace() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = &db.store;
    let before = build_chain(store, 3).await;
    let l = &before[1].link;
    let mut raw = Raw::connect(store).await;
    let replace_link = format!(
        "REPLACE INTO ledger (seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash) \
         VALUES ({}, {}, '{}', NULL, 'R-1', 'mallory', '{SCRIPT_HASH}', '{}', '{}', '{}')",
        l.seq, l.at.0, l.kind, l.content_hash, l.prev_hash, l.hash
    );
    let replace_content = "INSERT OR REPLACE INTO ledger_content (seq, content) VALUES (3, '{\"answer\":\"forged\"}')";
    let mut allowed = Vec::new();
    for sql in [replace_link.as_str(), replace_content] {
        if let Ok(n) = raw.exec(sql).await {
            allowed.push(format!("`{sql}` ({n} rows)"));
        }
    }
    raw.close().await;
    assert!(allowed.is_empty(), "the ledger must refuse REPLACE, but allowed: {}", allowed.join("; "));
    assert_eq!(store.ledger_page(0, 100).await.unwrap(), before, "nothing changed");
    db.finish().await;
}

/// SQLite only: a database from before migration 0008 (the chain's tables keyed by
/// `BIGINT`, content with a foreign key to its entry) is upgraded in place when Wavelet
/// opens it: every entry, its content and its erasure copied as they were, the chain still
/// verifying, the guards in force again, and appending going on from the same head.
#[tokio::test]
async fn a_sqlite_ledger_from_before_rowid_keys_is_upgraded_with_its_chain_intact() {
    // The chain, written by today's Wavelet, with an erasure in it.
    let source = TestDb::new(Backend::Sqlite).await;
    let entries = build_chain(&source.store, 7).await;
    assert!(source.store.erase(3, "retention period ended", "rey", Millis(30_000)).await.unwrap());
    let before = source.store.ledger_page(0, 100).await.unwrap();
    let head = source.store.ledger_head().await.unwrap();
    assert_eq!((before.len(), before[2].content.as_ref()), (entries.len() + 1, None));
    let source_file = sqlite_file(&source.store);

    // A database as migrations 0001 to 0007 left it, holding the same rows.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&file).create_if_missing(true);
    let mut old = SqliteConnection::connect_with(&opts).await.unwrap();
    let mut migrator = sqlx::migrate!("../../migrations/sqlite");
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version < 8).cloned().collect::<Vec<_>>().into();
    migrator.run(&mut old).await.unwrap();
    let ddl: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'ledger'").fetch_one(&mut old).await.unwrap();
    assert!(ddl.contains("BIGINT PRIMARY KEY"), "the old layout: {ddl}");
    let copy = format!(
        "ATTACH DATABASE '{}' AS src; \
         INSERT INTO ledger SELECT * FROM src.ledger; \
         INSERT INTO ledger_content SELECT * FROM src.ledger_content; \
         UPDATE ledger_head SET seq = (SELECT seq FROM src.ledger_head), hash = (SELECT hash FROM src.ledger_head), \
                commits = (SELECT commits FROM src.ledger_head); \
         DETACH DATABASE src;",
        source_file.display()
    );
    sqlx::raw_sql(AssertSqlSafe(copy)).execute(&mut old).await.unwrap();
    let rows_before = chain_rows(&mut old).await;
    let guards_before = chain_guards(&mut old).await;
    assert_eq!((rows_before.0.len(), rows_before.1.len(), guards_before.len()), (8, 8, 8));
    old.close().await.unwrap();
    source.finish().await;

    // Opening it migrates it.
    let store = Store::open(&format!("sqlite://{}", file.display())).await.unwrap();
    assert_eq!(store.ledger_page(0, 100).await.unwrap(), before, "every entry, content and erasure as it was");
    assert_eq!(store.ledger_head().await.unwrap(), head);
    assert!(store.verify(&[]).await.unwrap().is_ok(), "the chain verifies");
    let mut raw = Raw::connect(&store).await;
    let Raw::Sqlite(c) = &mut raw else { unreachable!("a SQLite store") };
    assert_eq!(chain_rows(c).await, rows_before, "every column of every row, erasure time and reason too");
    assert_eq!(chain_guards(c).await, guards_before, "the same indexes and triggers");
    let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *c).await.unwrap();
    assert_eq!(page, 4096, "a file made before keeps its page size");
    for table in ["ledger", "ledger_content"] {
        let ddl: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = $1")
            .bind(table)
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert!(ddl.contains("seq") && ddl.contains("INTEGER PRIMARY KEY"), "{table} is keyed by its row id: {ddl}");
        let keys: Vec<(i64,)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT id FROM pragma_foreign_key_list('{table}')")))
                .fetch_all(&mut *c)
                .await
                .unwrap();
        assert!(keys.is_empty(), "{table} has no foreign key");
    }
    // The guards are back.
    raw.refused("UPDATE ledger SET actor = 'x' WHERE seq = 2", "append-only: UPDATE is refused").await;
    raw.refused("DELETE FROM ledger WHERE seq = 7", "append-only: DELETE is refused").await;
    raw.refused("REPLACE INTO ledger SELECT * FROM ledger WHERE seq = 2", "an entry cannot be replaced").await;
    raw.refused("UPDATE ledger_content SET content = '{}' WHERE seq = 2", "can only be erased, once").await;
    raw.refused("UPDATE ledger_content SET content = '{}' WHERE seq = 3", "can only be erased, once").await;
    raw.refused("UPDATE ledger_content SET erased_at = 1, erasure_reason = 'again' WHERE seq = 3", "erased, once")
        .await;
    raw.refused("DELETE FROM ledger_content WHERE seq = 2", "can only be erased, not deleted").await;
    raw.refused("INSERT OR REPLACE INTO ledger_content (seq, content) VALUES (2, '{}')", "not replaced").await;
    raw.close().await;
    // And the chain goes on from where it stood.
    let mut tx = store.begin().await.unwrap();
    tx.append(draft(40_000, EntryKind::QuestionAnswered, None, Some("R-1"), json!({ "answer": "after" })));
    tx.commit().await.unwrap();
    let report = ledger::verify(store.ledger_page(0, 100).await.unwrap(), &store.ledger_head().await.unwrap()).unwrap();
    assert_eq!((report.entries, report.erased), (head.seq + 1, 1));
    store.close().await;
}

/// A chain entry's row and a content row, every column, as SQLite holds them.
type ChainRows = (
    Vec<(i64, i64, String, Option<String>, Option<String>, String, Option<String>, String, String, String)>,
    Vec<(i64, Option<String>, Option<i64>, Option<String>)>,
);

/// Every row of the chain's two tables, in order.
async fn chain_rows(c: &mut SqliteConnection) -> ChainRows {
    let entries = sqlx::query_as(
        "SELECT seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash FROM ledger ORDER BY seq",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    let contents = sqlx::query_as("SELECT seq, content, erased_at, erasure_reason FROM ledger_content ORDER BY seq")
        .fetch_all(&mut *c)
        .await
        .unwrap();
    (entries, contents)
}

/// The indexes and triggers on the chain's two tables, as created.
async fn chain_guards(c: &mut SqliteConnection) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') \
         AND tbl_name IN ('ledger', 'ledger_content') AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(c)
    .await
    .unwrap()
}
