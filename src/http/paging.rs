//! The `limit` and `cursor` parameters every list takes. A cursor is opaque to callers: the
//! last item's key, base64url-encoded, decoded here and read by each list.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::problem::ApiError;

/// `limit`: `default` when absent, else 1 to `max`.
pub(super) fn limit(given: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| ApiError::bad_parameter("limit", format!("must be between 1 and {max}"))),
    }
}

/// `cursor`, read by `read` from its decoded bytes; `None` when absent. One that does not
/// decode or read is a 400 problem.
pub(super) fn cursor<T>(given: Option<&str>, read: impl FnOnce(Vec<u8>) -> Option<T>) -> Result<Option<T>, ApiError> {
    given
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(read)
                .ok_or_else(|| ApiError::bad_parameter("cursor", "not a cursor returned by this API"))
        })
        .transpose()
}

/// A page from `rows`, read with a limit of `limit + 1` (the extra row says whether another
/// page follows): the first `limit` rows, and the cursor after the last of them when more
/// follow, made from that row's `key`.
pub(super) fn page<T, K: AsRef<[u8]>>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(|last| encode(key(last))) } else { None };
    (rows, next)
}

/// The cursor of a page that follows the row whose key is `key`.
pub(super) fn encode(key: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(key)
}
