//! Checks across sections: ids unique, references to what is defined, accounts and rooms
//! claimed once.

use super::*;

/// Where each id was first defined: its index among its kind and its line.
pub(super) struct Defined {
    pub(super) first: HashMap<String, (usize, usize)>,
}

impl Defined {
    pub(super) fn contains(&self, id: &str) -> bool {
        self.first.contains_key(id)
    }
}

/// Reports ids used twice within one kind, at the second use; returns the ids defined.
pub(super) fn unique_ids<'r>(
    rep: &mut Report<'_>,
    kind: &str,
    ids: impl Iterator<Item = (&'r String, &'r Option<Sp<String>>)>,
) -> Defined {
    let mut first: HashMap<String, (usize, usize)> = HashMap::new();
    for (index, (path, id)) in ids.enumerate() {
        let Some(id) = id else { continue };
        match first.get(&id.v) {
            Some(&(_, line)) => rep.error(
                &id.span,
                format!("{path}.id"),
                format!(
                    "the {kind} id `{}` is already used on line {line}; give each [[{kind}]] its \
                        own id",
                    id.v
                ),
            ),
            None => {
                let line = rep.line(&id.span);
                first.insert(id.v.clone(), (index, line));
            }
        }
    }
    Defined { first }
}

/// Reports a reference to a `kind` id that nothing defines.
pub(super) fn check_ref(rep: &mut Report<'_>, id: &Sp<String>, key: &str, kind: &str, defined: &Defined) {
    if defined.contains(&id.v) {
        return;
    }
    let a = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let add = format!("add {a} [[{kind}]] with id = \"{}\"", id.v);
    // Only well-formed ids are worth suggesting.
    let valid = defined.first.keys().map(String::as_str).filter(|d| d.chars().all(is_id_char));
    let advice = match closest(&id.v, valid) {
        Some(near) => format!("did you mean `{near}`? If not, {add}"),
        None => add,
    };
    rep.error(&id.span, key, format!("no [[{kind}]] has the id `{}`; {advice}", id.v));
}

/// Reports accounts claimed by two people, and returns each person's accounts with the
/// console account defaulted to their id.
pub(super) fn check_accounts(rep: &mut Report<'_>, people: &[RawPerson], ids: &Defined) -> Vec<Vec<Account>> {
    struct Claim<'p> {
        owner: &'p str,
        line: usize,
        key: String,
        span: Span,
    }
    let mut claims: HashMap<Account, Claim<'_>> = HashMap::new();
    for p in people {
        let owner = p.id.as_ref().map_or(p.path.as_str(), |id| id.v.as_str());
        for (platform, id) in &p.accounts {
            let account = Account { platform: *platform, id: id.v.clone() };
            let key = format!("{}.accounts.{platform}", p.path);
            match claims.get(&account) {
                Some(claim) => rep.error(
                    &id.span,
                    key,
                    format!(
                        "the {platform} account `{}` already belongs to person `{}` (line {}); \
                            an account can belong to one person only, so remove it from one of \
                            them",
                        id.v, claim.owner, claim.line
                    ),
                ),
                None => {
                    let line = rep.line(&id.span);
                    claims.insert(account, Claim { owner, line, key, span: id.span.clone() });
                }
            }
        }
    }

    let mut out = Vec::with_capacity(people.len());
    for (index, p) in people.iter().enumerate() {
        let mut accounts: Vec<Account> =
            p.accounts.iter().map(|(platform, id)| Account { platform: *platform, id: id.v.clone() }).collect();
        let has_console = accounts.iter().any(|a| a.platform == Platform::Console);
        if let Some(id) = &p.id
            && !has_console
        {
            let account = Account { platform: Platform::Console, id: id.v.clone() };
            // Only the first person with an id gets its default: a repeated id is
            // reported already.
            let first = ids.first.get(&id.v).is_some_and(|&(i, _)| i == index);
            if first && let Some(claim) = claims.get(&account) {
                rep.error(
                    &claim.span,
                    claim.key.clone(),
                    format!(
                        "the console account `{0}` is already person `{0}`'s, as every person \
                            without a console account gets one named after their id; give `{1}` \
                            another console account, or give `{0}` one of their own",
                        id.v, claim.owner
                    ),
                );
            }
            accounts.insert(0, account);
        }
        out.push(accounts);
    }
    out
}

/// Reports rooms claimed by two groups (or twice by one).
pub(super) fn check_rooms(rep: &mut Report<'_>, groups: &[RawGroup]) {
    let mut claims: HashMap<&RoomRef, (usize, &str, usize)> = HashMap::new();
    for (index, g) in groups.iter().enumerate() {
        let owner = g.id.as_ref().map_or(g.path.as_str(), |id| id.v.as_str());
        for (key, room) in &g.rooms {
            match claims.get(&room.v) {
                Some(&(other, other_owner, line)) => {
                    let message = if other == index {
                        format!("the room `{}` is already listed on line {line}; remove the repeat", room.v)
                    } else {
                        format!(
                            "the room `{}` already belongs to group `{other_owner}` (line \
                                {line}); a room can belong to one group only, so remove it from \
                                one of them",
                            room.v
                        )
                    };
                    rep.error(&room.span, key, message);
                }
                None => {
                    let line = rep.line(&room.span);
                    claims.insert(&room.v, (index, owner, line));
                }
            }
        }
    }
}
