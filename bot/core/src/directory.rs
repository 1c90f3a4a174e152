//! The directory: who is who. Built once from a checked [`Config`]; answers which person
//! an account belongs to, which groups a person is in, and who holds a role in a group.
//! Display names are never used for identity: only platform account ids are.

use crate::config::{Config, Group, Person};
use crate::domain::{Account, Platform, RoomRef};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct Directory {
    config: Config,
    by_account: HashMap<Account, usize>,
    by_id: HashMap<String, usize>,
    group_by_room: HashMap<RoomRef, usize>,
    /// Each group's members (people named, and everyone in a named agency), as indices
    /// into the people, in directory order.
    members: Vec<Vec<usize>>,
    /// See [`Directory::live_platforms`].
    live: Vec<Platform>,
}

impl Directory {
    pub fn new(config: Config) -> Directory {
        let mut by_account = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, p) in config.people.iter().enumerate() {
            by_id.insert(p.id.clone(), i);
            for a in &p.accounts {
                by_account.insert(a.clone(), i);
            }
        }
        let mut group_by_room = HashMap::new();
        for (i, g) in config.groups.iter().enumerate() {
            for r in &g.rooms {
                group_by_room.insert(r.clone(), i);
            }
        }
        let members = config
            .groups
            .iter()
            .map(|g| {
                (0..config.people.len())
                    .filter(|&i| {
                        let p = &config.people[i];
                        g.members.contains(&p.id) || g.agencies.contains(&p.agency)
                    })
                    .collect()
            })
            .collect();
        let mut live = Vec::new();
        if config.matrix.is_some() {
            live.push(Platform::Matrix);
        }
        if config.discord.is_some() {
            live.push(Platform::Discord);
        }
        if live.is_empty() {
            live.push(Platform::Console);
        }
        Directory { config, by_account, by_id, group_by_room, members, live }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The person who owns this account, if anyone does.
    pub fn person_for(&self, account: &Account) -> Option<&Person> {
        self.by_account.get(account).map(|&i| &self.config.people[i])
    }

    pub fn person(&self, id: &str) -> Option<&Person> {
        self.by_id.get(id).map(|&i| &self.config.people[i])
    }

    pub fn people(&self) -> &[Person] {
        &self.config.people
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.config.groups.iter().find(|g| g.id == id)
    }

    pub fn groups(&self) -> &[Group] {
        &self.config.groups
    }

    /// The group that owns a shared room.
    pub fn group_for_room(&self, room: &RoomRef) -> Option<&Group> {
        self.group_by_room.get(room).map(|&i| &self.config.groups[i])
    }

    pub fn is_member(&self, group: &Group, person: &Person) -> bool {
        group.members.contains(&person.id) || group.agencies.contains(&person.agency)
    }

    /// Groups the person belongs to, in configuration order.
    pub fn groups_of<'a>(&'a self, person: &'a Person) -> impl Iterator<Item = &'a Group> + 'a {
        self.config.groups.iter().filter(move |g| self.is_member(g, person))
    }

    /// Members of a group, in directory order.
    pub fn members<'a>(&'a self, group: &'a Group) -> impl Iterator<Item = &'a Person> + 'a {
        let index = self.config.groups.iter().position(|g| g.id == group.id);
        index.map(|i| self.members[i].as_slice()).unwrap_or_default().iter().map(|&i| &self.config.people[i])
    }

    /// Members of a group holding a role.
    pub fn members_with_role<'a>(&'a self, group: &'a Group, role: &'a str) -> impl Iterator<Item = &'a Person> + 'a {
        self.members(group).filter(move |p| p.roles.iter().any(|r| r == role))
    }

    /// Everyone holding a role, in any group.
    pub fn people_with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Person> + 'a {
        self.config.people.iter().filter(move |p| p.roles.iter().any(|r| r == role))
    }

    /// The chat platforms this configuration connects to (`[matrix]`, `[discord]`), or the
    /// console room when it connects to none.
    pub fn live_platforms(&self) -> &[Platform] {
        &self.live
    }

    /// The account to reach a person on: on `preferred` when they have one there, else on
    /// a platform this configuration connects to, else their first (a message there waits
    /// in the outbox, and `wavelet run` counts those at start).
    pub fn account_on(&self, person: &Person, preferred: Platform) -> Option<Account> {
        let live = self.live_platforms();
        person
            .accounts
            .iter()
            .find(|a| a.platform == preferred)
            .or_else(|| person.accounts.iter().find(|a| live.contains(&a.platform)))
            .or_else(|| person.accounts.first())
            .cloned()
    }

    /// The direct room for reaching `person`, preferring `platform`.
    pub fn direct_room(&self, person: &Person, preferred: Platform) -> Option<RoomRef> {
        self.account_on(person, preferred).map(|a| RoomRef::Direct { platform: a.platform, account: a.id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(matrix: bool) -> Directory {
        let mut text = String::from(
            "[workflows]\ndir = \"w\"\n[[role]]\nid = \"practitioner\"\n[[agency]]\nid = \"school\"\nname = \"School\"\n\
             [[person]]\nid = \"alice\"\nname = \"Alice\"\nagency = \"school\"\nroles = [\"practitioner\"]\n\
             accounts = { console = \"alice\", matrix = \"@alice:example.org\" }\n",
        );
        if matrix {
            text.push_str("[matrix]\nhomeserver = \"https://example.org\"\nuser = \"@wavelet:example.org\"\n");
        }
        Directory::new(Config::parse(std::path::Path::new("w.toml"), &text, &|_| None).unwrap())
    }

    #[test]
    fn a_person_is_reached_where_wavelet_runs_when_the_preferred_platform_has_no_account_of_theirs() {
        let d = directory(true);
        let alice = d.person("alice").unwrap();
        assert_eq!(d.live_platforms(), [Platform::Matrix]);
        assert_eq!(d.account_on(alice, Platform::Discord).unwrap().platform, Platform::Matrix);
        assert_eq!(d.account_on(alice, Platform::Console).unwrap().platform, Platform::Console);
        let d = directory(false);
        let alice = d.person("alice").unwrap();
        assert_eq!(d.live_platforms(), [Platform::Console]);
        assert_eq!(d.account_on(alice, Platform::Discord).unwrap().platform, Platform::Console);
    }
}
