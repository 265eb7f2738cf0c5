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
    let (users, parties, tags) = (users?, parties?, tags?);
    if users.iter().any(|u| u == "@all")
        && (users.len() > 1 || !parties.is_empty() || !tags.is_empty())
    {
        report.error(subject, "to.users", "\"@all\" already reaches everyone and WeCom ignores the other recipients; use \"@all\" alone");
        ok = false;
    }
    if users.is_empty() && parties.is_empty() && tags.is_empty() {
        report.error(
            subject,
            "to",
            "has no recipients; list users, parties or tags (or users: [\"@all\"])",
        );
        ok = false;
    }
    // Joined only when every id is valid: none is empty or holds '|'.
    ok.then(|| Recipients::new(&users, &parties, &tags))
}

/// The keys that carry a schedule's message; exactly one of them is set.
const MESSAGE_KEYS: [&str; 5] = ["text", "textcard", "markdown", "news", "template_card"];

pub(super) fn validate_message(entry: &Entry<'_>, report: &mut Report) -> Option<MessageTemplate> {
    let present: Vec<&str> = MESSAGE_KEYS
        .into_iter()
        .filter(|key| entry.raw(key).is_some())
        .collect();
    let message = match present[..] {
        [] => {
            if !MESSAGE_KEYS.iter().any(|key| entry.misspelt(key)) {
                report.error(entry.subject, "text", "no message: add one of text: { content: ... }, textcard: { title, description, url }, markdown: { content: ... }, news: { articles: [...] } or template_card: { card_type: ..., ... }");
            }
            return None;
        }
        [one] => one,
        [first, .., last] => {
            let listed = if present.len() == 2 {
                format!("{first} and {last} are both set")
            } else {
                format!(
                    "{} and {last} are all set",
                    present[..present.len() - 1].join(", ")
                )
            };
            report.error(entry.subject, first, format!("{listed}; keep exactly one"));
            // Each one's own problems are reported all the same.
            for key in present {
                let _ = parse_message(entry, key, report);
            }
            return None;
        }
    };
    parse_message(entry, message, report)
}

/// The message under `key`, one of [`MESSAGE_KEYS`].
fn parse_message(entry: &Entry<'_>, key: &str, report: &mut Report) -> Option<MessageTemplate> {
    match key {
        "text" => {
            let text = entry.nested("text", TEXT_KEYS, report).ok()?;
            Some(MessageTemplate::Text {
                content: required(&text, "content", report)?,
            })
        }
        "textcard" => {
            let card = entry.nested("textcard", TEXTCARD_KEYS, report).ok()?;
            let title = required(&card, "title", report);
            let description = required(&card, "description", report);
            let url = required(&card, "url", report);
            let btntxt = card.get::<String>("btntxt", report);
            Some(MessageTemplate::TextCard {
                title: title?,
                description: description?,
                url: url?,
                btntxt: optional(btntxt.map_value(Some), None)?.filter(|b| !b.is_empty()),
            })
        }
        "markdown" => {
            let markdown = entry.nested("markdown", MARKDOWN_KEYS, report).ok()?;
            Some(MessageTemplate::Markdown {
                content: required(&markdown, "content", report)?,
            })
        }
        "news" => {
            let news = entry.nested("news", NEWS_KEYS, report).ok()?;
            Some(MessageTemplate::News {
                articles: articles(&news, report)?,
            })
        }
        _ => {
            let value = entry.raw("template_card")?;
            super::card::validate_card(value, entry.subject, report)
        }
    }
}

/// A required template: present, not empty, and a valid template.
fn required(part: &Entry<'_>, key: &str, report: &mut Report) -> Option<Template> {
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
}

/// An optional template: `Ok(None)` when absent or empty, `Err` when invalid (reported).
fn optional_template(
    part: &Entry<'_>,
    key: &str,
    report: &mut Report,
) -> Result<Option<Template>, ()> {
    match part.get::<String>(key, report) {
        Field::Value(source) if !source.trim().is_empty() => Template::parse(&source)
            .map(Some)
            .map_err(|m| report.error(part.subject, &part.name(key), m)),
        Field::Invalid => Err(()),
        _ => Ok(None),
    }
}

/// `news.articles`: a list of articles. How many WeCom takes is a limit, checked with the rest.
fn articles(news: &Entry<'_>, report: &mut Report) -> Option<Vec<Article<Template>>> {
    let field = news.name("articles");
    let items = match news.raw("articles") {
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            report.error(
                news.subject,
                &field,
                "must be a list of articles, each with title and url",
            );
            return None;
        }
        None => {
            news.missing(
                "articles",
                report,
                "is missing; list 1 to 8 articles, each with title and url",
            );
            return None;
        }
    };
    let mut articles = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let Some(article) = Entry::open(item.clone(), ARTICLE_KEYS, news.subject, &path, report)
        else {
            ok = false;
            continue;
        };
        let title = required(&article, "title", report);
        let url = required(&article, "url", report);
        let description = optional_template(&article, "description", report);
        let picurl = optional_template(&article, "picurl", report);
        let appid = optional_template(&article, "appid", report);
        let pagepath = optional_template(&article, "pagepath", report);
        if let (Ok(appid), Ok(pagepath)) = (&appid, &pagepath)
            && appid.is_some() != pagepath.is_some()
        {
            let (set, unset) = if appid.is_some() {
                ("appid", "pagepath")
            } else {
                ("pagepath", "appid")
            };
            report.error(
                news.subject,
                &article.name(unset),
                format!("is missing; WeCom needs appid and pagepath together (only {set} is set)"),
            );
            ok = false;
        }
        match (title, url, description, picurl, appid, pagepath) {
            (Some(title), Some(url), Ok(description), Ok(picurl), Ok(appid), Ok(pagepath)) => {
                articles.push(Article {
                    title,
                    description,
                    url,
                    picurl,
                    appid,
                    pagepath,
                });
            }
            _ => ok = false,
        }
    }
    ok.then_some(articles)
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

/// Renders the message at `sample` (the next slots, or now) and reports every WeCom limit it
/// breaks when sent to `dest`.
pub(super) fn check_limits(
    message: &MessageTemplate,
    dest: Dest,
    name: &str,
    zone: Tz,
    sample: &[DateTime<Utc>],
    subject: &Subject,
    report: &mut Report,
) {
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
            .limit_problems(dest)
        {
            if reported.insert(field.clone()) {
                report.error(subject, &field, problem);
            }
        }
    }
}

/// Warns that members who read WeCom in WeChat (the 微信插件, now 微工作台) do not see the
/// message: WeCom documents that it shows them neither markdown nor template cards.
pub(super) fn warn_wechat_plugin(
    message: &MessageTemplate,
    subject: &Subject,
    report: &mut Report,
) {
    let (field, kind) = match message {
        MessageTemplate::Markdown { .. } => ("markdown", "markdown messages"),
        MessageTemplate::TemplateCard { .. } => ("template_card", "template cards"),
        _ => return,
    };
    report.warn(subject, field, format!("members who read WeCom through the WeChat plugin (微信插件 / 微工作台) are not shown {kind}; send text, textcard or news to reach them too"));
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
