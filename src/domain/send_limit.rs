//! Send limits that defer: throttles per recipient and quotas per tenant, each a count of
//! sends per fixed window. Configured per channel (`config`), counted by `store::limits`,
//! applied by the dispatcher before a notification's first provider call.

/// What a send limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// Sends to one recipient of one tenant (`channels.X.recipient_max`).
    Recipient,
    /// A tenant's sends per minute (`channels.X.tenant_per_minute`).
    TenantMinute,
    /// A tenant's sends per day (`channels.X.tenant_per_day`).
    TenantDay,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Recipient => "recipient",
            LimitScope::TenantMinute => "quota_minute",
            LimitScope::TenantDay => "quota_day",
        }
    }

    /// Why a send was deferred, in its `deferred` event and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            LimitScope::Recipient => "recipient_throttle",
            LimitScope::TenantMinute => "tenant_quota_minute",
            LimitScope::TenantDay => "tenant_quota_day",
        }
    }

    /// The config key that sets it, for the timeline's `deferred` events.
    pub fn key(self) -> &'static str {
        match self {
            LimitScope::Recipient => "recipient_max",
            LimitScope::TenantMinute => "tenant_per_minute",
            LimitScope::TenantDay => "tenant_per_day",
        }
    }
}

/// At most `max` sends per fixed window of `window_secs` (aligned to the Unix epoch, so a
/// day is a UTC day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLimit {
    pub scope: LimitScope,
    pub max: u32,
    pub window_secs: u64,
}
