//! Sign-in links to the dashboard (`herald ops-link`): what a link carries and how it is
//! checked. A link names its row (`store::ops_links`) and carries an HMAC-SHA256, with a key
//! the server keeps in the database, over that row's id, tenant and expiry: a changed byte
//! anywhere fails the check, and the link holds no API key. That it works once and only
//! before its expiry is the row's to say.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

use super::TenantId;

/// The longest a link may live: long enough to open, short enough that a link seen over a
/// shoulder or left in a chat is soon worth nothing.
pub const MAX_MINUTES: u32 = 15;

/// The `signing_keys` purpose of the links' key.
pub const KEY_PURPOSE: &str = "ops-link";

/// Where a link sends the browser: the dashboard, with the token in the fragment, which the
/// browser never sends to a server (nor in a `Referer`).
pub fn url(base: &str, token: &str) -> String {
    format!("{}/ops#link={token}", base.trim_end_matches('/'))
}

/// The token of link `id`: `{id}.{mac}`.
pub fn token(key: &[u8], id: Uuid, tenant: TenantId, expires_at: OffsetDateTime) -> String {
    format!("{}.{}", id.simple(), URL_SAFE_NO_PAD.encode(mac(key, id, tenant, expires_at)))
}

/// The link id a token names, and the MAC it carries; `None` when it is not a token's shape.
pub fn parse(token: &str) -> Option<(Uuid, Vec<u8>)> {
    let (id, mac) = token.trim().split_once('.')?;
    Some((Uuid::try_parse(id).ok()?, URL_SAFE_NO_PAD.decode(mac).ok()?))
}

/// Whether `given` is the MAC of link `id` as stored (compared in constant time).
pub fn verify(key: &[u8], given: &[u8], id: Uuid, tenant: TenantId, expires_at: OffsetDateTime) -> bool {
    hmac(key, id, tenant, expires_at).verify_slice(given).is_ok()
}

fn mac(key: &[u8], id: Uuid, tenant: TenantId, expires_at: OffsetDateTime) -> Vec<u8> {
    hmac(key, id, tenant, expires_at).finalize().into_bytes().to_vec()
}

/// The HMAC over what is signed: the link, its tenant and its expiry to the microsecond (as
/// stored).
fn hmac(key: &[u8], id: Uuid, tenant: TenantId, expires_at: OffsetDateTime) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"herald ops-link v1\n");
    m.update(id.as_bytes());
    m.update(tenant.as_uuid().as_bytes());
    m.update(&(expires_at.unix_timestamp_nanos() / 1000).to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_checks_only_as_made() {
        let (key, id, tenant) = ([7u8; 32], Uuid::now_v7(), TenantId::from_uuid(Uuid::now_v7()));
        let at = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
        let t = token(&key, id, tenant, at);
        let (parsed, mac) = parse(&t).expect("parses");
        assert_eq!(parsed, id);
        assert!(verify(&key, &mac, id, tenant, at));
        assert!(!verify(&[8u8; 32], &mac, id, tenant, at), "another key");
        assert!(!verify(&key, &mac, id, tenant, at + time::Duration::seconds(1)), "another expiry");
        assert!(!verify(&key, &mac, id, TenantId::from_uuid(Uuid::now_v7()), at), "another tenant");
        let mut altered = mac.clone();
        altered[0] ^= 1;
        assert!(!verify(&key, &altered, id, tenant, at));
        assert!(parse("not a token").is_none());
    }
}
