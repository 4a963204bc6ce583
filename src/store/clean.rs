//! Text from outside made storable. PostgreSQL keeps no NUL character in `text` or `jsonb`
//! (`\u0000` in JSON included): a provider's answer, a receipt's reason or a receiver's error
//! that carries one would make its whole statement fail, and with it every outcome written
//! beside it. Whatever comes from outside (provider answers, receipts, callback answers) goes
//! through here on its way into SQL: a NUL becomes U+FFFD, the replacement character.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::domain::content::has_nul;

const REPLACEMENT: &str = "\u{FFFD}";

/// `s` with every NUL replaced.
pub fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') { Cow::Owned(s.replace('\0', REPLACEMENT)) } else { Cow::Borrowed(s) }
}

/// `v` with every NUL replaced, in strings and in object keys.
pub fn json(v: &Value) -> Cow<'_, Value> {
    if has_nul(v) { Cow::Owned(cleaned(v)) } else { Cow::Borrowed(v) }
}

fn cleaned(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(text(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(cleaned).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (text(k).into_owned(), cleaned(v))).collect::<Map<_, _>>())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_replaced_everywhere_and_nothing_else_changes() {
        assert_eq!(text("bad\0request"), "bad\u{FFFD}request");
        assert!(matches!(text("fine"), Cow::Borrowed(_)));
        let v = json!({"a\u{0}": ["x\u{0}", 1, {"b": "y\u{0}"}], "c": null});
        assert_eq!(json(&v).into_owned(), json!({"a\u{FFFD}": ["x\u{FFFD}", 1, {"b": "y\u{FFFD}"}], "c": null}));
        let clean = json!({"a": [1, "b"]});
        assert!(matches!(json(&clean), Cow::Borrowed(_)));
    }
}
