//! The fake's data: contacts, lists and their ordered membership.
//!
//! Everything here is synchronous and lives behind the one mutex of the fake; the HTTP layer
//! (`http.rs`) decides what a request means, this file only keeps the data consistent and fast.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Id of AutoSend's virtual "All Contacts" list.
pub const GLOBAL_CONTACT_LIST: &str = "GLOBAL_CONTACT_LIST";

/// Whether a contact list is a static list or a filter-based segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// A static list: contacts are added and removed explicitly.
    List,
    /// A segment: membership comes from filter criteria, so contacts cannot be removed from it.
    Segment,
}

impl ListKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListKind::List => "list",
            ListKind::Segment => "segment",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats epoch milliseconds as ISO 8601 UTC (`2026-01-15T10:30:00.000Z`), like AutoSend does.
/// Hand-rolled (days-to-civil algorithm by Howard Hinnant) to avoid a date crate for one format.
pub(crate) fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

/// Emails are compared the way AutoSend stores them: trimmed and lowercased.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Contact {
    /// Full name, as webhook payloads carry it (`name`).
    pub fn name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
            .trim()
            .to_string()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "createdAt": iso8601(self.created_ms),
            "updatedAt": iso8601(self.updated_ms),
        })
    }
}

/// Ordered set of contact indices, in insertion order, with O(log n) insert, remove and
/// "k-th member" lookup.
///
/// Why not a `Vec`: removing 200,000 contacts 500 at a time from a 100,000+ list must not cost
/// O(list size) per request. Why not a `BTreeMap` keyed by sequence: offset pagination would then
/// cost O(offset) per page. Slots are append-only (a removed slot becomes a tombstone, a re-added
/// contact gets a new slot at the end, as a re-added member would sort last by insertion time);
/// a Fenwick tree over the live flags answers "which slot is the k-th live member" in O(log n).
#[derive(Debug, Default, Clone)]
pub(crate) struct Membership {
    slots: Vec<u32>,
    alive: Vec<bool>,
    /// 1-based Fenwick tree over `alive`; `fenwick[0]` is unused.
    fenwick: Vec<u32>,
    slot_of: HashMap<u32, usize>,
}

impl Membership {
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn contains(&self, contact: u32) -> bool {
        self.slot_of.contains_key(&contact)
    }

    /// Adds a contact at the end; false if it was already a member.
    pub fn insert(&mut self, contact: u32) -> bool {
        if self.slot_of.contains_key(&contact) {
            return false;
        }
        if self.fenwick.is_empty() {
            self.fenwick.push(0);
        }
        let slot = self.slots.len();
        self.slots.push(contact);
        self.alive.push(true);
        // Appending position i to a Fenwick tree: node i covers (i - lowbit(i), i].
        let i = slot + 1;
        let low = i & i.wrapping_neg();
        let covered = self.prefix(i - 1) - self.prefix(i - low);
        self.fenwick.push(covered + 1);
        self.slot_of.insert(contact, slot);
        true
    }

    /// Removes a contact; false if it was not a member.
    pub fn remove(&mut self, contact: u32) -> bool {
        let Some(slot) = self.slot_of.remove(&contact) else {
            return false;
        };
        self.alive[slot] = false;
        let mut i = slot + 1;
        while i < self.fenwick.len() {
            self.fenwick[i] -= 1;
            i += i & i.wrapping_neg();
        }
        // Keep tombstones from piling up after heavy churn: rebuild once they dominate.
        let dead = self.slots.len() - self.slot_of.len();
        if dead > 1024 && dead > self.slot_of.len() {
            self.compact();
        }
        true
    }

    /// Number of live slots among the first `i` slots.
    fn prefix(&self, mut i: usize) -> u32 {
        let mut sum = 0;
        while i > 0 {
            sum += self.fenwick[i];
            i &= i - 1;
        }
        sum
    }

    /// Slot index of the k-th (0-based) live member.
    fn nth_slot(&self, k: usize) -> Option<usize> {
        if k >= self.len() {
            return None;
        }
        let n = self.fenwick.len() - 1;
        let mut pos = 0;
        let mut remaining = k as u32 + 1;
        let mut step = if n == 0 {
            0
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.fenwick[next] < remaining {
                pos = next;
                remaining -= self.fenwick[next];
            }
            step >>= 1;
        }
        // `pos` is the largest position whose prefix is < k+1, so slot `pos` (0-based) is it.
        Some(pos)
    }

    /// Up to `limit` members starting at the `offset`-th live member, in insertion order.
    pub fn page(&self, offset: usize, limit: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(limit.min(self.len()));
        let Some(start) = self.nth_slot(offset) else {
            return out;
        };
        for slot in start..self.slots.len() {
            if out.len() >= limit {
                break;
            }
            if self.alive[slot] {
                out.push(self.slots[slot]);
            }
        }
        out
    }

    /// All members in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(c, _)| *c)
    }

    fn compact(&mut self) {
        let members: Vec<u32> = self.iter().collect();
        *self = Membership::default();
        for c in members {
            self.insert(c);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ContactList {
    pub id: String,
    pub name: String,
    pub description: String,
    pub kind: ListKind,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub members: Membership,
}

impl ContactList {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.kind.as_str(),
            "contactCount": self.members.len(),
            "createdAt": iso8601(self.created_ms),
            "updatedAt": iso8601(self.updated_ms),
        });
        if self.kind == ListKind::Segment {
            // Segment membership is seeded by tests, not computed; the criteria are decorative.
            v["filterCriteria"] = json!({"logicalOperator": "AND", "groups": []});
        }
        v
    }
}

/// Contacts and lists. Contacts are never deleted (AutoSend's delete-contact API is not faked).
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub contacts: Vec<Contact>,
    pub by_email: HashMap<String, u32>,
    pub by_id: HashMap<String, u32>,
    pub lists: Vec<ContactList>,
    pub list_index: HashMap<String, usize>,
    created_ms: u64,
}

impl Store {
    pub fn new() -> Self {
        Store {
            created_ms: now_ms(),
            ..Default::default()
        }
    }

    /// Creates or renames a list (keeping its members if it already exists).
    pub fn add_list(&mut self, id: &str, name: &str, description: &str, kind: ListKind) {
        let now = now_ms();
        if let Some(&i) = self.list_index.get(id) {
            let list = &mut self.lists[i];
            list.name = name.to_string();
            list.description = description.to_string();
            list.kind = kind;
            list.updated_ms = now;
            return;
        }
        self.list_index.insert(id.to_string(), self.lists.len());
        self.lists.push(ContactList {
            id: id.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            kind,
            created_ms: now,
            updated_ms: now,
            members: Membership::default(),
        });
    }

    pub fn list(&self, id: &str) -> Option<&ContactList> {
        self.list_index.get(id).map(|&i| &self.lists[i])
    }

    pub fn list_mut(&mut self, id: &str) -> Option<&mut ContactList> {
        self.list_index.get(id).map(|&i| &mut self.lists[i])
    }

    /// Looks a contact up by (already normalised) email.
    pub fn find_email(&self, email: &str) -> Option<u32> {
        self.by_email.get(email).copied()
    }

    pub fn find_id(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Looks a contact up by email (any case) or by id.
    pub fn find_any(&self, email_or_id: &str) -> Option<u32> {
        self.find_email(&normalize_email(email_or_id))
            .or_else(|| self.find_id(email_or_id.trim()))
    }

    /// Returns the contact for a normalised email, creating it if needed; `true` if created.
    /// The contact `email` with the id `id`, created when new: a seed that names its ids, so
    /// that a demo can write policies by contact id. An email that has another id already,
    /// or an id that another email has, is an error.
    pub fn get_or_create_with_id(&mut self, email: &str, id: &str) -> Result<u32, String> {
        match (self.find_email(email), self.by_id.get(id).copied()) {
            (Some(a), Some(b)) if a == b => return Ok(a),
            (Some(a), _) => {
                return Err(format!(
                    "contact {email} already has the id {}, not {id}",
                    self.contacts[a as usize].id
                ));
            }
            (None, Some(b)) => {
                return Err(format!(
                    "id {id} is already the contact {}'s",
                    self.contacts[b as usize].email
                ));
            }
            (None, None) => {}
        }
        let (index, _) = self.get_or_create(email);
        let generated = std::mem::replace(&mut self.contacts[index as usize].id, id.to_string());
        self.by_id.remove(&generated);
        self.by_id.insert(id.to_string(), index);
        Ok(index)
    }

    pub fn get_or_create(&mut self, email: &str) -> (u32, bool) {
        if let Some(i) = self.find_email(email) {
            return (i, false);
        }
        let index = self.contacts.len() as u32;
        // Deterministic 24-hex ids (AutoSend's look like MongoDB ObjectIds); the fixed prefix
        // makes them recognisable in logs and the counter keeps test output stable.
        let id = format!(
            "{:024x}",
            0x6a27_dd38_0000_0000_0000_0000u128 + u128::from(index)
        );
        let local = email.split('@').next().unwrap_or(email);
        let mut first_name: String = local.to_string();
        if let Some(c) = first_name.get(..1) {
            first_name = c.to_uppercase() + &first_name[1..];
        }
        let now = now_ms();
        self.contacts.push(Contact {
            id: id.clone(),
            email: email.to_string(),
            first_name,
            last_name: "Fake".to_string(),
            created_ms: now,
            updated_ms: now,
        });
        self.by_email.insert(email.to_string(), index);
        self.by_id.insert(id, index);
        (index, true)
    }

    /// JSON object of the virtual "All Contacts" list.
    pub fn global_list_json(&self) -> Value {
        json!({
            "id": GLOBAL_CONTACT_LIST,
            "name": "All Contacts",
            "description": "All contacts in the project",
            "type": "list",
            "contactCount": self.contacts.len(),
            "createdAt": iso8601(self.created_ms),
            "updatedAt": iso8601(self.created_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_696_075_200_123), "2023-09-30T12:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn membership_pages_match_a_naive_model_under_random_churn() {
        let mut m = Membership::default();
        let mut model: Vec<u32> = Vec::new();
        // Small LCG: deterministic without depending on rand's seeding API.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u32
        };
        for round in 0..20_000 {
            let c = next() % 3000;
            if next() % 3 == 0 {
                assert_eq!(m.remove(c), model.contains(&c));
                model.retain(|&y| y != c);
            } else {
                assert_eq!(m.insert(c), !model.contains(&c));
                if !model.contains(&c) {
                    model.push(c);
                }
            }
            if round % 500 == 0 {
                assert_eq!(m.len(), model.len());
                assert_eq!(m.iter().collect::<Vec<_>>(), model);
                for offset in [0, 1, 7, model.len() / 2, model.len().saturating_sub(1)] {
                    let want: Vec<u32> = model.iter().skip(offset).take(13).copied().collect();
                    assert_eq!(m.page(offset, 13), want, "offset {offset}");
                }
                assert!(m.page(model.len(), 5).is_empty());
            }
        }
    }
}
