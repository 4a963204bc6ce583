//! Idempotency keys and the request hash they are stored with: a retried request with the
//! same key and the same body (whatever its key order or spacing) gets the original answer.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// An `Idempotency-Key` (a header, or a batch item's `idempotency_key`): 1 to 255 visible ASCII
/// characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `raw` as a key, if it is one.
    pub fn parse(raw: &str) -> Option<IdempotencyKey> {
        let ok = !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| (0x21..0x7f).contains(&b));
        ok.then(|| IdempotencyKey(raw.to_owned()))
    }

    /// The key a batch's `Idempotency-Key` gives its item `index` when the item has none.
    pub fn for_item(&self, index: usize) -> Option<IdempotencyKey> {
        IdempotencyKey::parse(&format!("{}/{index}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// SHA-256 of the body in a canonical form (object keys sorted, no whitespace), so the same
/// request hashes the same whatever key order or spacing the client used.
pub fn request_hash(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    Sha256::digest(&out).to_vec()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": {"y": [1, 2], "x": "s"}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"b":{"x":"s","y":[1,2]},"a":1}"#).expect("json");
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&json!({"a": 2, "b": {"y": [1, 2], "x": "s"}})));
    }

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse("order-42").is_some());
        for bad in ["", "with space", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_none(), "{bad:?}");
        }
        let batch = IdempotencyKey::parse(&"k".repeat(250)).expect("key");
        assert_eq!(batch.for_item(999).map(IdempotencyKey::into_string), Some(format!("{}/999", "k".repeat(250))));
        assert!(IdempotencyKey::parse(&"k".repeat(252)).expect("key").for_item(999).is_none(), "too long for an item");
    }
}
