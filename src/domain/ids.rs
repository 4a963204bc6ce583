//! Typed ids, so a tenant id can never be passed where a notification id is expected.
//! Notification ids are UUIDv7: time-ordered, which makes keyset pagination by id match
//! creation order and keeps the primary-key index append-mostly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($name:ident) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(NotificationId);

impl NotificationId {
    /// How long ago this id was made (a UUIDv7 holds its millisecond): the time since
    /// acceptance, without a read. `None` for an id from the future or without a time.
    pub fn age(&self) -> Option<std::time::Duration> {
        let (secs, nanos) = self.as_uuid().get_timestamp()?.to_unix();
        let made = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
        std::time::SystemTime::now().duration_since(made).ok()
    }

    /// The smallest notification id minted at `t` (to the millisecond): UUIDv7 ids sort by
    /// creation time, so a time bound becomes a range of the primary key (or of any index that
    /// ends in `id`), which an index answers without reading the rows outside it.
    pub fn floor_at(t: time::OffsetDateTime) -> uuid::Uuid {
        let ms = u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid()
    }
}
typed_id!(TenantId);
typed_id!(ApiKeyId);

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn ids_sort_between_the_floors_of_their_time() {
        let before = OffsetDateTime::now_utc();
        let id = NotificationId::new().as_uuid();
        let after = OffsetDateTime::now_utc() + Duration::milliseconds(1);
        assert!(NotificationId::floor_at(before - Duration::milliseconds(1)) <= id);
        assert!(id < NotificationId::floor_at(after + Duration::milliseconds(1)));
        assert!(NotificationId::floor_at(before) < NotificationId::floor_at(before + Duration::seconds(1)));
        assert_eq!(NotificationId::floor_at(before).get_version_num(), 7);
    }
}
