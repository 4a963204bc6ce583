//! Standard Webhooks (standardwebhooks.com): the secret format and the signature, shared by
//! status callbacks (`dispatch::callbacks`) and the `webhook` provider. Imports nothing of
//! Herald.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key of a Standard Webhooks secret: `whsec_` and the base64 (padded or not) of 24
/// to 64 random bytes, as the Standard Webhooks libraries generate and expect them.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let bad =
        || "must be a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes".to_owned();
    let b64 = secret.strip_prefix("whsec_").ok_or_else(bad)?;
    let key = STANDARD.decode(b64).or_else(|_| STANDARD_NO_PAD.decode(b64.trim_end_matches('='))).map_err(|_| bad())?;
    if (24..=64).contains(&key.len()) { Ok(key) } else { Err(bad()) }
}

/// The HMAC key of a secret as stored. A secret given now must pass `signing_key`; one stored
/// under the looser rule of earlier versions (the `whsec_` prefix optional, any length of
/// base64) still signs, so that an upgrade never silences a tenant's callbacks.
pub fn stored_key(secret: &str) -> Option<Vec<u8>> {
    signing_key(secret).ok().or_else(|| {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD.decode(b64).or_else(|_| STANDARD_NO_PAD.decode(b64.trim_end_matches('='))).ok()?;
        (!key.is_empty()).then_some(key)
    })
}

/// A new signing secret: 32 random bytes.
pub fn new_signing_secret() -> String {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` header value for one delivery: `v1,` and the base64 HMAC-SHA256
/// of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new(); // HMAC accepts keys of any length: unreachable
    };
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        assert_eq!(signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").map(|k| k.len()), Ok(24));
        assert_eq!(signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD==").map(|k| k.len()), Ok(24));
        let fresh = new_signing_secret();
        assert_eq!(signing_key(&fresh).map(|k| k.len()), Ok(32));
        assert_ne!(fresh, new_signing_secret());
        // Stored under the older rule: still signs; nonsense does not.
        assert_eq!(stored_key("c2hvcnQ=").map(|k| k.len()), Some(5));
        assert_eq!(stored_key(&fresh).map(|k| k.len()), Some(32));
        assert!(stored_key("whsec_***").is_none() && stored_key("").is_none());
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

    /// The Standard Webhooks libraries' own test vectors.
    #[test]
    fn signs_like_the_spec_vectors() {
        let key = signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("key");
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
