//! The history API's windows, the Python service's semantics:
//!
//! - neither `start` nor `end`: the last hour, oldest first;
//! - `start` and/or `end`: `[start or now − 1 h, end or now]`, oldest first;
//! - only `end`: backwards from `end` with no lower bound (newest first, then reversed), the way
//!   the UI pages back through history.
//!
//! At most [`PAGE`] lines; `has_more` says a further line exists. Going forward, `window_start`
//! is the first line's time and `window_end` the last line's + 1 ms; going backward,
//! `window_start` is the first line's time − 1 ms and `window_end` the last line's. `query` is a
//! case-insensitive wildcard over the whole message (`*` any text, `?` one character).
//!
//! The next page starts 1 ms beyond this one, so a page that would end inside a millisecond
//! (lines are stored in whole milliseconds, up to 500 of a device in one) leaves that
//! millisecond's lines to the next page: the original lost them.

use chrono::{DateTime, Duration, Utc};

use crate::db::device_logs::{self as queries, LogLine, Window};
use crate::db::{Db, DbError};

pub const PAGE: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub query: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub has_more: bool,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
}

/// A wildcard (`*`, `?`) as a LIKE pattern with `\` escapes.
pub fn like_pattern(wildcard: &str) -> String {
    let mut out = String::with_capacity(wildcard.len() + 2);
    for c in wildcard.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub async fn page(
    db: &Db,
    device_id: i64,
    q: &LogQuery,
    now: DateTime<Utc>,
) -> Result<LogPage, DbError> {
    let pattern = q
        .query
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(like_pattern);
    let backward = q.start.is_none() && q.end.is_some();
    let window = Window {
        device_id,
        from: if backward {
            None
        } else {
            Some(q.start.unwrap_or(now - Duration::hours(1)))
        },
        to: Some(q.end.unwrap_or(now)),
        pattern: pattern.as_deref(),
        newest_first: backward,
        limit: PAGE as i64 + 1,
    };
    let mut lines = queries::window(db, &window).await?;
    let has_more = lines.len() > PAGE;
    if has_more {
        let boundary = lines[PAGE].logged_at;
        lines.truncate(PAGE);
        let whole = lines.iter().rposition(|l| l.logged_at != boundary);
        if let Some(last_whole) = whole {
            lines.truncate(last_whole + 1);
        }
    }
    if backward {
        lines.reverse();
    }
    let (first, last) = (
        lines.first().map(|l| l.logged_at),
        lines.last().map(|l| l.logged_at),
    );
    let ms = Duration::milliseconds(1);
    let (window_start, window_end) = if backward {
        (first.map(|t| t - ms), last)
    } else {
        (first, last.map(|t| t + ms))
    };
    Ok(LogPage {
        lines,
        has_more,
        window_start,
        window_end,
    })
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn wildcards_become_like_patterns_and_like_characters_are_escaped() {
        assert_eq!(like_pattern("*error*"), "%error%");
        assert_eq!(like_pattern("wifi ?"), "wifi _");
        assert_eq!(like_pattern("100%_done\\"), "100\\%\\_done\\\\");
    }
}
