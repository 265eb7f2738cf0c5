//! A reload that takes over what it read before: an item of `schedules:` whose text did not
//! change, read in the same context, validates as it did, so its schedule and warnings are
//! taken from the config in force instead of being parsed and checked again.
//!
//! Only the checks that look at upcoming slots depend on the moment. They look at the slots
//! after `now`; as long as no slot of the schedule fell between the earlier reading and this
//! one, those are the same slots, and the checks find the same. So an item is taken over only
//! when its first slot after the earlier reading is still ahead, and a reading that finds any
//! problem is done again in full: problems are always the full reading's.

use sha2::{Digest, Sha256};

use super::*;

/// What the next reading of the same file may take over (kept with a [`Config`] read in
/// pieces).
#[derive(Debug, PartialEq)]
pub(crate) struct Memo {
    /// The instant the slots were sampled after.
    now: DateTime<Utc>,
    context: Key,
    /// How many warnings come before the schedules' (about the file, apps, robots).
    head_warnings: usize,
    /// One per item, in the file's order: the file had no problem, so one per schedule.
    items: Vec<Item>,
}

/// One item of `schedules:`, as read: 24 bytes, one per schedule of the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Item {
    /// The first 12 bytes (96 bits) of the SHA-256 of its text: two different items of one
    /// file share them with a chance of about n² in 2⁹⁷.
    hash: [u8; 12],
    /// How many warnings it had.
    warnings: u32,
    /// Its first slot after the reading, in whole Unix seconds, as a slot is
    /// ([`NO_SLOT`]: it has none, or it failed). Cut to the second a slot never has, it can
    /// only come out earlier, and so only take over less.
    first: i64,
}

/// [`Item::first`] of an item without a slot.
const NO_SLOT: i64 = i64::MIN;

impl Item {
    pub(super) fn new(text: &str, first: Option<DateTime<Utc>>, warnings: usize) -> Item {
        Item::hashed(hash(text), first, warnings)
    }

    fn hashed(hash: [u8; 12], first: Option<DateTime<Utc>>, warnings: usize) -> Item {
        Item {
            hash,
            first: first.map_or(NO_SLOT, |f| f.timestamp()),
            // More warnings than that for one schedule: the count is wrong, and the check
            // against the warnings kept makes the next reload read everything.
            warnings: u32::try_from(warnings).unwrap_or(u32::MAX),
        }
    }

    /// Whether its first slot after the reading is still ahead of `now`. A slot in whole
    /// seconds is after `now` exactly when it is after `now`'s whole second; [`NO_SLOT`] never is.
    fn ahead_of(&self, now: DateTime<Utc>) -> bool {
        self.first > now.timestamp()
    }
}

/// The hash of every item, in the runs the pieces are read in (on every core).
fn hashes(pieces: &Pieces<'_>) -> Vec<[u8; 12]> {
    let runs = pieces.runs(crate::parallel::threads(super::MAX_READERS));
    crate::parallel::in_order(
        &runs,
        || (),
        |run, ()| {
            run.indices()
                .map(|i| hash(pieces.item(i)))
                .collect::<Vec<_>>()
        },
    )
    .concat()
}

fn hash(text: &str) -> [u8; 12] {
    let digest = Sha256::digest(text.as_bytes());
    let mut hash = [0; 12];
    hash.copy_from_slice(&digest[..12]);
    hash
}

/// Everything a schedule's reading depends on besides its own text and the moment.
#[derive(Debug, PartialEq)]
struct Key {
    default_zone: Tz,
    default_catch_up: Option<chrono::Duration>,
    calendars: BTreeMap<String, Option<Arc<Calendar>>>,
    declared: BTreeSet<String>,
    apps: BTreeSet<String>,
    declared_robots: BTreeSet<String>,
    robots: BTreeSet<String>,
}

impl Key {
    fn of(context: &Context<'_>) -> Key {
        Key {
            default_zone: context.default_zone,
            default_catch_up: context.default_catch_up,
            calendars: context.calendars.clone(),
            declared: context.declared.clone(),
            apps: context.apps.keys().cloned().collect(),
            declared_robots: context.declared_robots.clone(),
            robots: context.robots.keys().cloned().collect(),
        }
    }
}

impl Memo {
    pub(super) fn new(context: &Context<'_>, head_warnings: usize, items: Vec<Item>) -> Memo {
        Memo {
            now: context.now,
            context: Key::of(context),
            head_warnings,
            items,
        }
    }
}

/// Reads the items of `pieces` with what `prior` read before. `None` when too little of it can
/// be taken over to be worth it (the pieces are then read on every core), or when the reading
/// found a problem (it is then done in full, for the exact problems); `report` is untouched
/// then. Otherwise the schedules and their items, with the warnings added to `report`.
pub(super) fn revalidate(
    pieces: &Pieces<'_>,
    context: &Context<'_>,
    prior: &Prior,
    report: &mut Report,
) -> Option<(Vec<Arc<Schedule>>, Vec<Item>)> {
    let memo = &prior.memo;
    if context.now < memo.now
        || memo.items.len() != prior.schedules.len()
        || memo.context != Key::of(context)
    {
        return None;
    }
    // Each earlier item by its text, with where its warnings start.
    let mut earlier = HashMap::with_capacity(memo.items.len());
    let mut at = memo.head_warnings;
    for (index, item) in memo.items.iter().enumerate() {
        earlier.insert(item.hash, (index, at));
        at += item.warnings as usize;
    }
    if at != prior.warnings.len() {
        return None;
    }
    // Taken over: the same text, and no slot since (the slots it was checked at are the next).
    let hashes = hashes(pieces);
    let taken: Vec<Option<(usize, usize)>> = hashes
        .iter()
        .map(|hash| {
            earlier
                .get(hash)
                .copied()
                .filter(|&(index, _)| memo.items[index].ahead_of(context.now))
        })
        .collect();
    if taken.iter().flatten().count() * 2 < taken.len() {
        return None;
    }
    let mut own = Report::default();
    let mut names = HashSet::new();
    let mut schedules = Vec::with_capacity(hashes.len());
    let mut items = Vec::with_capacity(hashes.len());
    for (index, (hash, taken)) in hashes.iter().zip(&taken).enumerate() {
        if let Some((old, at)) = *taken
            && names.insert(prior.schedules[old].name.to_string())
        {
            let item = memo.items[old];
            schedules.push(prior.schedules[old].clone());
            own.warnings
                .extend_from_slice(&prior.warnings[at..at + item.warnings as usize]);
            items.push(item);
            continue;
        }
        // New or changed (or a name used twice: read, to report it as the full reading does).
        let text = pieces.item(index);
        let value = super::super::yaml::parse_item(text)?;
        let before = own.warnings.len();
        let read = validate_schedule(index, value, context, &mut names, &mut own);
        if !own.problems.is_empty() {
            return None;
        }
        let (schedule, first) = read?;
        schedules.push(Arc::new(schedule));
        items.push(Item::hashed(*hash, first, own.warnings.len() - before));
    }
    report.warnings.extend(own.warnings);
    Some((schedules, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_item_takes_24_bytes_and_keeps_its_first_slot_to_the_second() {
        assert_eq!(std::mem::size_of::<Item>(), 24);
        let slot = crate::time::from_db("2026-12-03T09:30:00Z").unwrap();
        let item = Item::new("- { name: a }", Some(slot), 2);
        let just_before = slot - chrono::Duration::milliseconds(1);
        assert!(item.ahead_of(just_before));
        assert!(!item.ahead_of(slot), "a slot reached is not ahead");
        assert!(!item.ahead_of(slot + chrono::Duration::milliseconds(500)));
        assert!(!Item::new("- { name: a }", None, 0).ahead_of(just_before));
        assert_eq!(item.hash, Item::new("- { name: a }", None, 0).hash);
        assert_ne!(item.hash, Item::new("- { name: b }", None, 0).hash);
    }
}
