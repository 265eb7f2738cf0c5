//! `calendars:` entries: skipped dates and make-up workdays.

use super::*;

/// `calendars:`; a declared but invalid calendar maps to `None`.
pub(super) fn validate_calendars(
    map: &serde_yaml::Mapping,
    report: &mut Report,
) -> BTreeMap<String, Option<Arc<Calendar>>> {
    let mut calendars = BTreeMap::new();
    for (name, value) in map {
        let Some(name) = name.as_str().map(str::to_string) else {
            report.error(
                &Subject::File,
                "calendars",
                "calendar names must be strings",
            );
            continue;
        };
        let subject = Subject::Calendar(name.as_str().into());
        let name_problem = name_problem(&name);
        if let Some(problem) = &name_problem {
            report.error(&subject, "name", problem.clone());
        }
        let calendar = Entry::open(value.clone(), CALENDAR_KEYS, &subject, "", report).and_then(|entry| {
            let skip = dates(&entry, "skip", report);
            let workdays = dates(&entry, "workdays", report);
            let (skip, workdays) = (skip?, workdays?);
            if let Some(both) = skip.intersection(&workdays).next() {
                report.error(&subject, "workdays", format!("{both} is also listed under skip; a date is either a holiday or a make-up workday"));
                return None;
            }
            name_problem.is_none().then(|| Arc::new(Calendar { name: name.clone(), skip, workdays }))
        });
        calendars.insert(name, calendar);
    }
    calendars
}

/// A list of `YYYY-MM-DD` dates.
pub(super) fn dates(
    entry: &Entry<'_>,
    key: &str,
    report: &mut Report,
) -> Option<BTreeSet<chrono::NaiveDate>> {
    let texts = entry.ids(key, report)?;
    let mut dates = BTreeSet::new();
    let mut ok = true;
    for text in texts {
        match chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
            Ok(date) => {
                dates.insert(date);
            }
            Err(_) => {
                report.error(
                    entry.subject,
                    &entry.name(key),
                    format!("\"{text}\" is not a date; write YYYY-MM-DD, e.g. 2026-10-01"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(dates)
}
