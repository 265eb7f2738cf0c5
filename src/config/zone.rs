//! The system's time zone, read the way glibc reads it, as an IANA zone.
//!
//! `$TZ` may be an IANA name (`Asia/Tokyo`), a file (`:/etc/localtime`,
//! `/usr/share/zoneinfo/Asia/Tokyo`; a leading `:` is dropped, as glibc does), or a POSIX rule
//! (`EST5EDT,M3.2.0,M11.1.0`). A file is named by where it lies under a zoneinfo folder (after
//! following links), else by the zoneinfo file with the same bytes, else by the rule at its end.
//! A POSIX rule is the IANA zone whose current rule (the last line of its TZif file) is the same
//! rule, so every future slot falls where glibc would put it. Unset `TZ` means `/etc/localtime`;
//! a zone that cannot be resolved is an error, never a silent UTC.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;

/// Where tzdata keeps its TZif files (glibc's default `TZDIR`).
const ZONEINFO: &str = "/usr/share/zoneinfo";
/// The system zone when `TZ` is unset.
const LOCALTIME: &str = "/etc/localtime";
/// The largest TZif file read; real ones are under 4 KiB.
const MAX_TZIF_BYTES: u64 = 256 * 1024;

/// The system's zone. `Ok(None)`: none is configured at all (no `TZ`, no `/etc/localtime`),
/// where glibc uses UTC.
pub(super) fn system_zone() -> Result<Option<Tz>, String> {
    match std::env::var("TZ") {
        // glibc: a TZ that is set but empty is UTC.
        Ok(tz) if tz.is_empty() => Ok(Some(Tz::UTC)),
        Ok(tz) => resolve_tz(&tz).map(Some).map_err(|why| {
            format!(
                "TZ={} {why}; set timezone: (e.g. Asia/Shanghai) at the top of the file, or fix TZ",
                super::escaped(&tz)
            )
        }),
        Err(_) if !Path::new(LOCALTIME).exists() => Ok(None),
        Err(_) => {
            // iana-time-zone reads the /etc/localtime link (and /etc/timezone on old systems).
            if let Some(zone) = iana_time_zone::get_timezone()
                .ok()
                .and_then(|name| name.parse::<Tz>().ok())
            {
                return Ok(Some(zone));
            }
            resolve_file(Path::new(LOCALTIME)).map(Some).map_err(|why| {
                format!(
                    "{LOCALTIME} {why}; set timezone: (e.g. Asia/Shanghai) at the top of the file"
                )
            })
        }
    }
}

/// Resolves a `TZ` value (see the module docs).
fn resolve_tz(tz: &str) -> Result<Tz, String> {
    // glibc: "TZ=:characters" names a file; the colon itself carries no meaning.
    let tz = tz.strip_prefix(':').unwrap_or(tz);
    if tz.is_empty() {
        return resolve_file(Path::new(LOCALTIME));
    }
    if let Ok(zone) = tz.parse::<Tz>() {
        return Ok(zone);
    }
    if tz.starts_with('/') {
        return resolve_file(Path::new(tz));
    }
    let relative = Path::new(ZONEINFO).join(tz);
    if !tz.contains("..") && relative.is_file() {
        return resolve_file(&relative);
    }
    resolve_rule(tz)
}

/// The IANA zone of a TZif file.
fn resolve_file(path: &Path) -> Result<Tz, String> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| format!("names a file that cannot be read: {e}"))?;
    if let Some(zone) = name_under_zoneinfo(&real) {
        return Ok(zone);
    }
    let bytes = read_tzif(&real)?;
    if let Some(zone) = zoneinfo_files()
        .into_iter()
        .find(|(_, candidate)| std::fs::read(candidate).is_ok_and(|b| b == bytes))
        .and_then(|(name, _)| name.parse::<Tz>().ok())
    {
        return Ok(zone);
    }
    match footer(&bytes) {
        Some(rule) if !rule.is_empty() => resolve_rule(rule),
        _ => Err(format!(
            "is a time zone file ({}) that matches no zone in {ZONEINFO}",
            real.display()
        )),
    }
}

/// `…/zoneinfo/Asia/Tokyo` → Asia/Tokyo (`posix/` zones are the same zones).
fn name_under_zoneinfo(path: &Path) -> Option<Tz> {
    let text = path.to_str()?;
    let (_, name) = text.rsplit_once("/zoneinfo/")?;
    let name = name.strip_prefix("posix/").unwrap_or(name);
    name.parse::<Tz>().ok()
}

/// A TZif file's bytes, bounded; anything else is refused.
fn read_tzif(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("names a file that cannot be read: {e}"))?;
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    let mut bytes = Vec::new();
    if regular {
        file.take(MAX_TZIF_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("names a file that cannot be read: {e}"))?;
    }
    if !bytes.starts_with(b"TZif") {
        return Err(format!(
            "names {}, which is not a time zone (TZif) file",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The POSIX rule on the last line of a version 2+ TZif file.
fn footer(bytes: &[u8]) -> Option<&str> {
    let body = bytes.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|b| *b == b'\n')? + 1;
    std::str::from_utf8(&body[start..]).ok()
}

/// The IANA zone that follows the POSIX rule `rule` now.
fn resolve_rule(rule: &str) -> Result<Tz, String> {
    if !looks_like_a_rule(rule) {
        return Err(
            "is neither an IANA zone name, nor a zone file, nor a POSIX TZ rule".to_string(),
        );
    }
    if let Some(zone) = fixed_offset_zone(rule) {
        return Ok(zone);
    }
    let mut matches: Vec<String> = zoneinfo_files()
        .into_iter()
        .filter(|(_, path)| read_tzif(path).is_ok_and(|bytes| footer(&bytes) == Some(rule)))
        .map(|(name, _)| name)
        .filter(|name| name.parse::<Tz>().is_ok())
        .collect();
    if matches.is_empty() {
        return Err(format!(
            "is a POSIX rule that no zone in {ZONEINFO} follows (is the tzdata package installed?)"
        ));
    }
    // The legacy names spelled like the rule (EST5EDT, CET) read best; then the first by name.
    let abbreviation: String = rule
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let legacy = rule.split(',').next().unwrap_or_default();
    matches.sort_by_key(|name| (name != legacy, *name != abbreviation, name.clone()));
    matches[0]
        .parse::<Tz>()
        .map_err(|_| "names no zone".to_string())
}

/// A rule without daylight saving and with a whole-hour offset (`CST-8`, `UTC0`) is the zone
/// Etc/GMT±N (whose sign, like POSIX's, is west-positive).
fn fixed_offset_zone(rule: &str) -> Option<Tz> {
    let rest = rule.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let (sign, digits) = match rest.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("+", rest.strip_prefix('+').unwrap_or(rest)),
    };
    if rest.len() == rule.len() || digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let hours: u32 = digits.parse().ok()?;
    if hours == 0 {
        return Some(Tz::UTC);
    }
    format!("Etc/GMT{sign}{hours}").parse::<Tz>().ok()
}

/// A POSIX TZ rule starts with a standard-time abbreviation (3+ letters, or `<...>`) and an offset.
fn looks_like_a_rule(rule: &str) -> bool {
    let rest = if let Some(quoted) = rule.strip_prefix('<') {
        match quoted.split_once('>') {
            Some((_, rest)) => rest,
            None => return false,
        }
    } else {
        let letters = rule.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        if letters < 3 {
            return false;
        }
        &rule[letters..]
    };
    rest.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-')
}

/// Every TZif file under [`ZONEINFO`] with its zone name, sorted by name (`posix/` and
/// `right/` are copies, and leap-second clocks respectively, and are skipped).
fn zoneinfo_files() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut folders = vec![PathBuf::from(ZONEINFO)];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let Some(name) = path
                .strip_prefix(ZONEINFO)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_string)
            else {
                continue;
            };
            if kind.is_dir() {
                if !matches!(name.as_str(), "posix" | "right") {
                    folders.push(path);
                }
            } else if kind.is_file() {
                found.push((name, path));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tz_forms_that_glibc_accepts_resolve_to_their_zone() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        assert_eq!(resolve_tz("Asia/Tokyo"), Ok(tokyo));
        assert_eq!(resolve_tz(":Asia/Tokyo"), Ok(tokyo));
        assert_eq!(resolve_tz("/usr/share/zoneinfo/Asia/Tokyo"), Ok(tokyo));
        assert_eq!(
            resolve_tz(":/usr/share/zoneinfo/posix/Asia/Tokyo"),
            Ok(tokyo)
        );
        assert_eq!(resolve_tz("CST-8"), Ok("Etc/GMT-8".parse().unwrap()));
        assert_eq!(resolve_tz("UTC0"), Ok(Tz::UTC));
        assert_eq!(resolve_tz("EST5EDT,M3.2.0,M11.1.0"), Ok(Tz::EST5EDT));
        assert_eq!(resolve_tz("CET-1CEST,M3.5.0,M10.5.0/3"), Ok(Tz::CET));
        for bad in [
            "Nowhere/Atlantis",
            "XYZ3ABC,M1.1.0,M2.1.0",
            "/etc/passwd",
            "ab",
        ] {
            assert!(resolve_tz(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_copied_zone_file_is_named_by_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("localtime");
        std::fs::copy("/usr/share/zoneinfo/Asia/Tokyo", &copy).unwrap();
        let zone = resolve_tz(copy.to_str().unwrap()).unwrap();
        // Asia/Tokyo and its alias Japan have the same bytes; either is the same zone.
        assert!(matches!(zone.name(), "Asia/Tokyo" | "Japan"), "{zone}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Europe/Berlin", &link).unwrap();
        assert_eq!(
            resolve_tz(&format!(":{}", link.display())),
            Ok(Tz::Europe__Berlin)
        );
    }
}
