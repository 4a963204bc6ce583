//! The two things a person types about a tenant, each with one rule applied everywhere (the
//! CLI, the configuration, the store): its name and its callback signing secret.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

/// A tenant name: 1 to 100 characters, letters, digits, `-`, `_` and `.`, starting with a
/// letter or a digit (it appears in logs, URLs of tools and shell commands unquoted).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a tenant name: use 1 to 100 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` and the base64 (padded or not) of 24
/// to 64 random bytes, as the Standard Webhooks libraries generate and expect them.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let bad =
        || "must be a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes".to_owned();
    let b64 = secret.strip_prefix("whsec_").ok_or_else(bad)?;
    let key = STANDARD.decode(b64).or_else(|_| STANDARD_NO_PAD.decode(b64.trim_end_matches('='))).map_err(|_| bad())?;
    if (24..=64).contains(&key.len()) { Ok(key) } else { Err(bad()) }
}

/// A new signing secret: 32 random bytes.
pub fn new_signing_secret() -> String {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["acme", "tenant-a", "Acme_Corp.eu", "7eleven"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bad tenant!", "-acme", ".hidden", "a/b", "é", &"a".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").map(|k| k.len()), Ok(24));
        assert_eq!(signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD==").map(|k| k.len()), Ok(24));
        let fresh = new_signing_secret();
        assert_eq!(signing_key(&fresh).map(|k| k.len()), Ok(32));
        assert_ne!(fresh, new_signing_secret());
        for bad in [
            "notwhsec",
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_",
            "whsec_***",
            "whsec_notbase64!!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(signing_key(bad).is_err(), "{bad}");
        }
    }
}
