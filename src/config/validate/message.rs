//! A schedule's recipients and message: WeCom's limits on the rendered text, and the
//! duplicate check that would swallow a repeat.

use super::*;

pub(super) fn validate_recipients(to: &Entry<'_>, report: &mut Report) -> Option<Recipients> {
    let subject = to.subject;
    let (users, parties, tags) = (
        to.ids("users", report),
        to.ids("parties", report),
        to.ids("tags", report),
    );
    let mut ok = true;
    for (key, ids, max) in [
        ("users", &users, MAX_USERS),
        ("parties", &parties, MAX_PARTIES),
        ("tags", &tags, MAX_TAGS),
    ] {
        let Some(ids) = ids else {
            ok = false;
            continue;
        };
        if ids.len() > max {
            report.error(subject, &to.name(key), format!("lists {} ids; WeCom accepts at most {max} per message (use a party or tag, or split the schedule)", ids.len()));
            ok = false;
        }
        for id in ids {
            if let Some(problem) = hidden_char_problem(id) {
                report.error(subject, &to.name(key), problem);
                ok = false;
            }
        }
        for id in ids.iter().filter(|id| {
            id.trim().is_empty()
                || id.contains('|')
                || id.contains(char::is_whitespace) && !id.contains(super::super::is_hidden_char)
        }) {
            report.error(
                subject,
                &to.name(key),
                format!("\"{id}\" is not a valid id (empty, or contains '|' or spaces)"),
            );
            ok = false;
        }
    }
    let to_all = Recipients {
        users: users?,
        parties: parties?,
        tags: tags?,
    };
    if to_all.users.is_empty() && to_all.parties.is_empty() && to_all.tags.is_empty() {
        report.error(
            subject,
            "to",
            "has no recipients; list users, parties or tags (or users: [\"@all\"])",
        );
        ok = false;
    }
    if to_all.users.iter().any(|u| u == "@all")
        && (to_all.users.len() > 1 || !to_all.parties.is_empty() || !to_all.tags.is_empty())
    {
        report.error(subject, "to.users", "\"@all\" already reaches everyone and WeCom ignores the other recipients; use \"@all\" alone");
        ok = false;
    }
    ok.then_some(to_all)
}

pub(super) fn validate_message(entry: &Entry<'_>, report: &mut Report) -> Option<MessageTemplate> {
    let text = entry.nested("text", TEXT_KEYS, report);
    let card = entry.nested("textcard", TEXTCARD_KEYS, report);
    let template = |part: &Entry<'_>, key: &str, report: &mut Report| -> Option<Template> {
        match part.get::<String>(key, report) {
            Field::Value(source) if !source.trim().is_empty() => Template::parse(&source)
                .map_err(|m| report.error(part.subject, &part.name(key), m))
                .ok(),
            Field::Invalid => None,
            _ => {
                part.missing(key, report, "is missing or empty");
                None
            }
        }
    };
    match (text, card) {
        (Field::Missing, Field::Missing) => {
            entry.missing(
                "text",
                report,
                "no message: add text: { content: ... } or textcard: { title, description, url }",
            );
            None
        }
        (Field::Value(_) | Field::Invalid, Field::Value(_) | Field::Invalid) => {
            report.error(
                entry.subject,
                "text",
                "text and textcard are both set; keep exactly one",
            );
            None
        }
        (Field::Value(text), Field::Missing) => Some(MessageTemplate::Text {
            content: template(&text, "content", report)?,
        }),
        (Field::Missing, Field::Value(card)) => {
            let title = template(&card, "title", report);
            let description = template(&card, "description", report);
            let url = template(&card, "url", report);
            let btntxt = card.get::<String>("btntxt", report);
            Some(MessageTemplate::TextCard {
                title: title?,
                description: description?,
                url: url?,
                btntxt: optional(btntxt.map_value(Some), None)?.filter(|b| !b.is_empty()),
            })
        }
        _ => None,
    }
}

impl<T> Field<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Value(v) => Field::Value(f(v)),
            Field::Invalid => Field::Invalid,
            Field::Missing => Field::Missing,
        }
    }
}

/// Renders the message at the next slots (or now) and reports every WeCom limit it breaks.
pub(super) fn check_limits(
    message: &MessageTemplate,
    name: &str,
    zone: Tz,
    slots: &[DateTime<Utc>],
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) {
    let now = [now];
    let sample = if slots.is_empty() { &now[..] } else { slots };
    // Template variables change the length a little from slot to slot: a few renderings tell.
    let count = if message.is_static() {
        1
    } else {
        RENDERINGS_CHECKED
    };
    let mut reported = HashSet::new();
    for slot in sample.iter().take(count) {
        for (field, problem) in message
            .render(name, slot.with_timezone(&zone))
            .limit_problems()
        {
            if reported.insert(field) {
                report.error(subject, field, problem);
            }
        }
    }
}

/// Warns when WeCom's duplicate check would swallow a repeat of an identical body.
pub(super) fn warn_duplicates(
    schedule: &Schedule,
    slots: &[DateTime<Utc>],
    subject: &Subject,
    report: &mut Report,
) {
    let interval = chrono::Duration::seconds(i64::from(schedule.duplicate_check_interval));
    let repeat = slots.windows(2).find(|w| {
        w[1] - w[0] < interval
            && (schedule.message.is_static()
                // The rest of the body is the same at every slot.
                || schedule.content_at(w[0]) == schedule.content_at(w[1]))
    });
    if let Some(pair) = repeat {
        let gap = (pair[1] - pair[0]).num_seconds();
        report.warn(subject, "duplicate_check_interval", format!(
            "the same body is sent again after {gap}s, within duplicate_check_interval ({}s): WeCom silently drops such repeats; set duplicate_check_interval below {gap} or put a variable such as {{{{ time }}}} in the text",
            schedule.duplicate_check_interval
        ));
    }
}
