//! The ledger witness: the chain's head posted outside the database once a day, after
//! checking the chain since the last witness (or an alarm instead).

use super::{Runtime, WAVELET, names};
use wavelet_core::ledger::{ChainCheck, Draft, Head, Record, Witness};
use wavelet_core::{MessageBody, Millis, OutboundMessage, RoomRef, keys};
use wavelet_store::{self as store, Tx};

impl Runtime {
    /// The ledger witness (`[audit]`): posts the chain's head, as this transaction sees it,
    /// into the witness group's rooms, and records that it did (an entry after the one
    /// posted). The message goes out only if this transaction commits, so what it names is
    /// in the chain. It first checks the chain since the last witness; if that does not
    /// verify, it posts an alarm to the group and the coordinators instead, and records it
    /// (`ledger.witness_withheld`), each time it falls due until the chain is mended.
    pub(super) async fn post_witness(
        &self,
        tx: &mut Tx,
        s: &wavelet_store::DueSchedule,
        now: Millis,
    ) -> store::Result<()> {
        let head = tx.head().clone();
        if head.seq == 0 {
            // Nothing to witness yet (a running Wavelet records its workflows first, so
            // only a store used by nothing else).
            return Ok(());
        }
        let rooms = self.group_rooms(&s.group_id);
        let platform = self.group_platform(&s.group_id);
        if rooms.is_empty() {
            // The schedule came from another process's configuration, which names a group
            // this one does not know: post nothing, and record nothing as posted.
            tracing::error!(group = %s.group_id, "ledger witness not posted: its group is not in this directory; coordinators told");
            let text = format!(
                "The ledger witness was not posted: its group `{}` is not in this Wavelet's configuration. Check \
                 [audit] witness_group in every Wavelet's configuration.",
                s.group_id
            );
            let key = format!("schedule:{}:{}", s.id, s.due_at.0);
            return self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await;
        }
        // A witness vouches for the chain it names: what came since the last one must
        // verify, or it posts an alarm instead (each time it falls due, until mended).
        let since = tx.last_witness().await?.unwrap_or_else(Head::genesis);
        if let Err(fault) = self.check_chain_since(tx, &since).await? {
            tracing::error!(
                seq = fault.seq,
                since = since.seq,
                "ledger does not verify since the last witness; witness withheld, coordinators told"
            );
            let text = format!(
                "Ledger witness WITHHELD, {}: the ledger does not verify since entry {} (the last witnessed): {fault}.\n\
                 Nothing is witnessed until it is mended. Reviewers: run `wavelet audit verify` with the witnesses you \
                 kept.",
                now.rfc3339(),
                since.seq,
            );
            self.queue_witness(tx, s, &rooms, &text, now).await?;
            let key = keys::witness_withheld(s.due_at.0);
            self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await?;
            let withheld = Record::LedgerWitnessWithheld {
                since: since.seq,
                fault_seq: fault.seq,
                problem: fault.problem.clone(),
                group: s.group_id.clone(),
            };
            tx.append(Draft::of(now, WAVELET, withheld));
            return Ok(());
        }
        let witness = Witness { seq: head.seq, hash: head.hash.clone() };
        let text = format!(
            "Ledger witness, {}: entry {} has hash {}.\nKeep this message. Reviewers can check the ledger \
            still holds what it held now with `wavelet audit verify --witness {witness}`.",
            now.rfc3339(),
            head.seq,
            head.hash,
        );
        self.queue_witness(tx, s, &rooms, &text, now).await?;
        let witnessed = Record::LedgerWitnessed {
            seq: head.seq,
            hash: head.hash.clone(),
            group: s.group_id.clone(),
            rooms: names(&rooms),
        };
        tx.append(Draft::of(now, WAVELET, witnessed));
        tracing::info!(seq = head.seq, group = %s.group_id, "ledger witness posted");
        Ok(())
    }

    /// Checks the committed chain from `since` to where it ended when `tx` began, a page at
    /// a time (the first witness checks the whole chain, while holding the chain's lock),
    /// and that no content is stored past that end.
    pub(super) async fn check_chain_since(
        &self,
        tx: &mut Tx,
        since: &Head,
    ) -> store::Result<Result<wavelet_core::ledger::VerifyReport, wavelet_core::ledger::ChainFault>> {
        const PAGE: i64 = 10_000;
        let end = tx.begun_at().clone();
        let erasures = tx.erasures_since(since.seq).await?;
        let mut check = ChainCheck::new(since.clone(), erasures, &[]);
        let mut after = since.seq;
        loop {
            let page = tx.ledger_page(after, PAGE).await?;
            let Some(last) = page.last() else {
                let report = check.finish(Some(&end));
                // Content planted past the head would stop the append that reaches it.
                if report.is_ok()
                    && let Some(seq) = tx.content_after(end.seq).await?
                {
                    return Ok(Err(wavelet_core::ledger::content_ahead(seq)));
                }
                return Ok(report);
            };
            after = last.link.seq;
            if let Err(fault) = page.iter().try_for_each(|e| check.next(e)) {
                return Ok(Err(fault));
            }
        }
    }

    /// Queues the witness's `text` to each of its group's rooms.
    pub(super) async fn queue_witness(
        &self,
        tx: &mut Tx,
        s: &wavelet_store::DueSchedule,
        rooms: &[RoomRef],
        text: &str,
        now: Millis,
    ) -> store::Result<()> {
        for room in rooms {
            let m = OutboundMessage {
                idempotency_key: keys::witness(s.due_at.0, room),
                room: room.clone(),
                person: None,
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue(&m, None, now).await?;
        }
        Ok(())
    }
}
