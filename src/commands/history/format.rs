//! How `history` shows a row: slots in the schedule's zone, errcodes in words, aligned tables.

use crate::shown::shown;
use chrono::Timelike;
use chrono_tz::Tz;

use crate::store::query::SendRow;

/// A stored timestamp as a reader in `zone` sees it: `2026-11-30 09:30 +08:00` (with seconds
/// only when they are not zero). An unreadable value is shown as stored.
pub(super) fn local(stored: &str, zone: Tz) -> String {
    match crate::time::from_db(stored) {
        Some(at) => {
            let at = at.with_timezone(&zone);
            let format = if at.second() == 0 {
                "%Y-%m-%d %H:%M %:z"
            } else {
                "%Y-%m-%d %H:%M:%S %:z"
            };
            at.format(format).to_string()
        }
        None => stored.to_string(),
    }
}

/// The errcode with a few words on it: `60020 IP not trusted`, `0`, or why no answer was read.
pub(super) fn errcode(row: &SendRow) -> String {
    let errmsg = row.errmsg.as_deref().unwrap_or("");
    match row.errcode {
        Some(0) => "0".to_string(),
        Some(code) => format!(
            "{code} {}",
            short_meaning(code).map_or_else(|| shorten(errmsg), str::to_string)
        ),
        None if errmsg.is_empty() => "-".to_string(),
        None => format!("- {}", shorten(errmsg)),
    }
    .trim_end()
    .to_string()
}

/// A table-sized meaning of the errcodes in `wecom::error` (which has the full advice).
pub(super) fn short_meaning(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        -1 => "system busy",
        40001 => "bad secret",
        40003 | 81013 => "no valid recipient",
        40013 => "bad corp_id",
        40014 | 41001 | 42001 => "token invalid",
        40056 => "bad agent_id",
        44004 => "empty text",
        45002 => "text too long",
        45009 => "rate limited",
        45033 => "too many concurrent",
        48002 => "no API permission",
        60020 => "IP not trusted",
        82001 => "outside visible range",
        301002 => "no permission",
        _ => return None,
    })
}

/// The first 40 characters of a message, on one line.
pub(super) fn shorten(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The recipients WeCom could not reach: `user:lisi|wangwu party:3`, or `-`.
pub(super) fn invalid(row: &SendRow) -> String {
    let parts: Vec<String> = [
        ("user", &row.invaliduser),
        ("party", &row.invalidparty),
        ("tag", &row.invalidtag),
        ("unlicensed", &row.unlicenseduser),
    ]
    .iter()
    .filter_map(|(what, list)| {
        list.as_deref()
            .filter(|l| !l.is_empty())
            .map(|l| format!("{what}:{l}"))
    })
    .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// Left-aligned columns two spaces apart, widths counted in characters.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    // Cells hold text from WeCom and the config: escaped here, once for every table.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| shown(cell).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_by_characters() {
        let rows = vec![
            vec!["站会".to_string(), "x".to_string()],
            vec!["ab".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "V"], &rows),
            "NAME  V\n站会    x\nab    y\n"
        );
    }
}
