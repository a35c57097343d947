//! How values read to a person: sizes, times, hashes, addresses; and the percent-encoding of
//! URL parts built from data (a firmware version may hold spaces, `#` or `?`).
//!
//! Everything here returns plain text or `Markup` whose data is escaped by maud.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// `1.5 MiB`, `312 B`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.unsigned_abs() < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// `2026-12-06 07:01 UTC`.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long ago `t` was, in the largest whole unit: `just now`, `5 min ago`, `3 h ago`,
/// `12 days ago`; `in the future` for clock skew.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - t).num_seconds();
    match seconds {
        s if s < -60 => "in the future".into(),
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s if s < 2 * 86_400 => "yesterday".into(),
        s => format!("{} days ago", s / 86_400),
    }
}

/// A `<time>` with the exact instant as its `datetime` and the UTC minute as its text.
pub fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) { (time_text(t)) } }
}

/// A `<time>` saying how long ago, with the exact minute in its tooltip.
pub fn time_ago(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) title=(time_text(t)) {
            (ago(t, now))
        }
    }
}

/// An optional time as "… ago", or `never`.
pub fn maybe_ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>, never: &str) -> Markup {
    match t {
        Some(t) => time_ago(t, now),
        None => html! { span.muted { (never) } },
    }
}

/// The first 12 hex digits of a hash in `<code>`, the whole hash in its tooltip.
pub fn short_hash(hash: Option<&str>) -> Markup {
    match hash {
        Some(h) => {
            let short: String = h.chars().take(12).collect();
            html! { code.hash title=(h) { (short) } }
        }
        None => html! { span.muted { "not recorded" } },
    }
}

/// `0x400d1234`.
pub fn hex32(value: u32) -> String {
    format!("0x{value:08x}")
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn segment(value: &str) -> String {
    encode(value)
}

/// Percent-encodes a query value or a whole local path for `?redirect=` (everything but RFC 3986
/// unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Rows for a textarea holding `text`: one more than its lines, within `min..=max`.
pub fn rows(text: &str, min: usize, max: usize) -> usize {
    (text.lines().count() + 1).clamp(min, max)
}

/// `n thing` / `n things`.
pub fn count(n: i64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(312), "312 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::minutes(5), now), "5 min ago");
        assert_eq!(ago(now - chrono::Duration::hours(3), now), "3 h ago");
        assert_eq!(ago(now - chrono::Duration::days(12), now), "12 days ago");
        assert_eq!(ago(now + chrono::Duration::hours(1), now), "in the future");
    }

    #[test]
    fn url_parts_are_percent_encoded() {
        assert_eq!(segment("1.0 rc#2?"), "1.0%20rc%232%3F");
        assert_eq!(encode("/models/1?a=b"), "%2Fmodels%2F1%3Fa%3Db");
    }
}
