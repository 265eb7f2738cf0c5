//! Holiday calendars (调休): dates on which a schedule does not send (`skip`: the slot is
//! recorded as `skipped`), and make-up workdays (`workdays`) on which a workday schedule fires
//! at its regular workday times although the day of the week says otherwise.
//!
//! The dates are data the operator maintains in the config; nothing is fetched.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::cron::CronSpec;

/// One `calendars:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    pub name: String,
    pub skip: BTreeSet<NaiveDate>,
    pub workdays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// True when `slot`, read in `zone`, falls on a skipped date.
    pub fn skips(&self, slot: DateTime<Utc>, zone: Tz) -> bool {
        self.skip.contains(&slot.with_timezone(&zone).date_naive())
    }

    /// True when `slot`, read in `zone`, falls on a make-up workday.
    pub fn is_workday(&self, slot: DateTime<Utc>, zone: Tz) -> bool {
        self.workdays
            .contains(&slot.with_timezone(&zone).date_naive())
    }

    /// The first slot of `variant` (a workday schedule's every-day form) after `from` (or at
    /// it) that falls on a make-up workday.
    pub fn next_workday_slot(
        &self,
        variant: &CronSpec,
        zone: Tz,
        from: DateTime<Utc>,
        inclusive: bool,
    ) -> Option<DateTime<Utc>> {
        let mut from = from;
        let mut inclusive = inclusive;
        loop {
            let slot = if inclusive {
                variant.next_from(from, zone)
            } else {
                variant.next_after(from, zone)
            }?;
            let date = slot.with_timezone(&zone).date_naive();
            if self.workdays.contains(&date) {
                return Some(slot);
            }
            // Jump to the first make-up date after this slot's date (none left: no slot).
            let next = *self.workdays.range(date.succ_opt()?..).next()?;
            from = crate::time::start_of_day(next, zone)?;
            inclusive = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_up_slots_fall_only_on_make_up_dates() {
        let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let calendar = Calendar {
            name: "cn".into(),
            skip: [date("2026-10-01")].into(),
            workdays: [date("2026-09-27"), date("2026-10-10")].into(),
        };
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let variant = CronSpec::parse("30 9 * * *").unwrap();
        let from = crate::time::from_db("2026-09-25T00:00:00Z").unwrap();
        let first = calendar
            .next_workday_slot(&variant, shanghai, from, false)
            .unwrap();
        assert_eq!(crate::time::to_db(first), "2026-09-27T01:30:00Z"); // Sunday 27th, 09:30 +08
        let second = calendar
            .next_workday_slot(&variant, shanghai, first, false)
            .unwrap();
        assert_eq!(crate::time::to_db(second), "2026-10-10T01:30:00Z"); // Saturday 10th
        assert_eq!(
            calendar.next_workday_slot(&variant, shanghai, second, false),
            None
        );
        assert!(calendar.skips(
            crate::time::from_db("2026-10-01T01:30:00Z").unwrap(),
            shanghai
        ));
        // 2026-09-30T16:30Z is already October 1st in Shanghai.
        assert!(calendar.skips(
            crate::time::from_db("2026-09-30T16:30:00Z").unwrap(),
            shanghai
        ));
    }
}
