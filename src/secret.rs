//! `Secret`: a string that never shows itself. A leaf: it imports nothing of Herald, so every
//! layer (configuration, providers, receipts) can hold secrets without importing another.

use std::fmt;

use serde::Deserialize;

/// A secret string. `Debug` prints `***`; use `expose()` at the point of use.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }
}
