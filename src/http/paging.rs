//! `limit`/`cursor` paging of the list endpoints (`GET /api/devices`,
//! `GET /api/devices/{id}/coredumps`).
//!
//! Without `limit` a list returns everything, as the Python service did and its UI expects, and
//! `next_cursor` is null. With `limit` (1–[`MAX_LIMIT`]) it returns at most that many items and,
//! when more follow, an opaque `next_cursor` to pass back as `cursor`. Paging is by key set (the
//! position of the last item returned, not an offset), so a page costs the same at any depth and
//! items inserted or deleted meanwhile neither repeat nor get skipped.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// The largest page a client may ask for.
pub const MAX_LIMIT: u32 = 1000;

/// Longest cursor accepted (a cursor this service made is well under it).
const MAX_CURSOR_LEN: usize = 200;

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PageQuery {
    /// At most this many items (1–1000); without it, every item.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request: how many items, after which position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<P> {
    pub limit: Option<u32>,
    pub after: Option<P>,
}

/// A position in a list, written into and read back from an opaque cursor.
pub trait Position: Sized {
    /// Distinguishes the cursors of different lists, so one list's cursor is refused by another.
    const KIND: &'static str;
    fn encode(&self) -> String;
    fn decode(text: &str) -> Option<Self>;
}

impl PageQuery {
    pub fn page<P: Position>(&self) -> Result<Page<P>, ApiError> {
        if let Some(limit) = self.limit {
            if limit == 0 || limit > MAX_LIMIT {
                return Err(ApiError::validation(format!(
                    "limit must be between 1 and {MAX_LIMIT}"
                )));
            }
        }
        let after =
            match self.cursor.as_deref().filter(|c| !c.is_empty()) {
                None => None,
                Some(cursor) => Some(decode_cursor::<P>(cursor).ok_or_else(|| {
                    ApiError::validation("cursor is not a next_cursor of this list")
                })?),
            };
        Ok(Page {
            limit: self.limit,
            after,
        })
    }
}

fn decode_cursor<P: Position>(cursor: &str) -> Option<P> {
    if cursor.len() > MAX_CURSOR_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix(P::KIND)?.strip_prefix(':')?;
    P::decode(rest)
}

fn encode_cursor<P: Position>(position: &P) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", P::KIND, position.encode()))
}

/// Cuts a page fetched with one extra row (`limit + 1`) to `limit`, and gives the cursor of the
/// next page when the extra row showed that one exists.
pub fn finish<T, P: Position>(
    mut rows: Vec<T>,
    limit: Option<u32>,
    position: impl Fn(&T) -> P,
) -> (Vec<T>, Option<String>) {
    let Some(limit) = limit.map(|l| l as usize) else {
        return (rows, None);
    };
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(|last| encode_cursor(&position(last)));
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Key(String);
    impl Position for Key {
        const KIND: &'static str = "k";
        fn encode(&self) -> String {
            self.0.clone()
        }
        fn decode(text: &str) -> Option<Self> {
            Some(Key(text.to_string()))
        }
    }

    #[derive(Debug, PartialEq)]
    struct Other;
    impl Position for Other {
        const KIND: &'static str = "o";
        fn encode(&self) -> String {
            String::new()
        }
        fn decode(_: &str) -> Option<Self> {
            Some(Other)
        }
    }

    fn query(limit: Option<u32>, cursor: Option<&str>) -> PageQuery {
        PageQuery {
            limit,
            cursor: cursor.map(str::to_string),
        }
    }

    #[test]
    fn without_limit_everything_and_no_cursor() {
        let (rows, next) = finish(vec![1, 2, 3], None, |n| Key(n.to_string()));
        assert_eq!(rows, vec![1, 2, 3]);
        assert_eq!(next, None);
    }

    #[test]
    fn extra_row_gives_a_cursor_that_reads_back() {
        let (rows, next) = finish(vec![1, 2, 3], Some(2), |n| Key(format!("d{n}")));
        assert_eq!(rows, vec![1, 2]);
        let cursor = next.expect("a next page");
        let page = query(Some(2), Some(&cursor)).page::<Key>().expect("valid");
        assert_eq!(page.after, Some(Key("d2".into())));
        let (_, last) = finish(vec![3], Some(2), |n| Key(n.to_string()));
        assert_eq!(last, None, "no cursor after the last page");
    }

    #[test]
    fn bad_limits_and_cursors_are_refused() {
        assert!(query(Some(0), None).page::<Key>().is_err());
        assert!(query(Some(MAX_LIMIT + 1), None).page::<Key>().is_err());
        assert!(query(Some(MAX_LIMIT), None).page::<Key>().is_ok());
        assert!(query(None, Some("not base64!")).page::<Key>().is_err());
        assert!(query(None, Some(&"A".repeat(300))).page::<Key>().is_err());
        let (_, next) = finish(vec![1, 2], Some(1), |_| Other);
        let foreign = next.expect("cursor");
        assert!(
            query(None, Some(&foreign)).page::<Key>().is_err(),
            "another list's cursor"
        );
        assert_eq!(
            query(None, Some("")).page::<Key>().expect("empty").after,
            None
        );
    }
}
