//! Send limits that defer: throttles per recipient and quotas per tenant, each a count of
//! sends per fixed window. Configured per channel (`config`), a tenant's quotas replaceable
//! by its own (`Quotas`, from `herald tenants set --quota`), counted by `store::limits`,
//! applied by the dispatcher before a notification's first provider call.

use std::collections::BTreeMap;

use super::Channel;

/// What a send limit counts. Their order is the order windows are counted (and locked) in,
/// the same in every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitScope {
    /// Sends to one recipient of one tenant (`channels.X.recipient_max`).
    Recipient,
    /// A tenant's sends per minute (`channels.X.tenant_per_minute`).
    TenantMinute,
    /// A tenant's sends per day (`channels.X.tenant_per_day`).
    TenantDay,
}

impl LimitScope {
    pub const ALL: [LimitScope; 3] = [LimitScope::Recipient, LimitScope::TenantMinute, LimitScope::TenantDay];

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
    /// The tenant's own quota (`tenants set --quota`), not the configured one.
    pub own: bool,
}

impl SendLimit {
    /// Where the limit comes from: the config key, or the tenant's own quota.
    pub fn key(&self, channel: Channel) -> String {
        match (self.own, self.scope) {
            (true, LimitScope::TenantMinute) => format!("tenant quota {}", quota_key(channel, Window::Minute)),
            (true, _) => format!("tenant quota {}", quota_key(channel, Window::Day)),
            (false, scope) => format!("channels.{channel}.{}", scope.key()),
        }
    }

    /// `channels.sms.recipient_max: 2 per 3600 s`, for messages.
    pub fn describe(&self, channel: Channel) -> String {
        format!("{}: {} per {} s", self.key(channel), self.max, self.window_secs)
    }
}

/// A tenant's own quotas, each replacing the configured one of its channel and window
/// (`sms.per_day = 0`: none for this tenant, whatever `channels.sms.tenant_per_day` says).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quotas(BTreeMap<(Channel, Window), u32>);

/// The windows a tenant quota counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    Minute,
    Day,
}

impl Window {
    fn scope(self) -> LimitScope {
        match self {
            Window::Minute => LimitScope::TenantMinute,
            Window::Day => LimitScope::TenantDay,
        }
    }

    fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Day => 86_400,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "per_minute",
            Window::Day => "per_day",
        }
    }
}

/// `sms.per_day`: the key of one quota, as stored and as `--quota` takes it.
pub fn quota_key(channel: Channel, window: Window) -> String {
    format!("{channel}.{}", window.as_str())
}

/// Read a quota key (`email.per_minute`, `sms.per_day`, …).
pub fn parse_quota_key(key: &str) -> Result<(Channel, Window), String> {
    let (ch, w) =
        key.split_once('.').ok_or_else(|| format!("`{key}`: expected CHANNEL.per_minute or CHANNEL.per_day"))?;
    let channel = Channel::parse(ch).ok_or_else(|| format!("`{ch}` is not a channel: email, sms or push"))?;
    let window = match w {
        "per_minute" => Window::Minute,
        "per_day" => Window::Day,
        _ => return Err(format!("`{w}` is not a quota window: per_minute or per_day")),
    };
    Ok((channel, window))
}

impl Quotas {
    /// From the stored object; keys or values that do not read are left out.
    pub fn from_json(v: &serde_json::Value) -> Quotas {
        let mut q = BTreeMap::new();
        for (k, n) in v.as_object().into_iter().flatten() {
            if let (Ok(key), Some(n)) = (parse_quota_key(k), n.as_u64().and_then(|n| u32::try_from(n).ok())) {
                q.insert(key, n);
            }
        }
        Quotas(q)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits of `channel` for this tenant: `configured`, with its quotas replaced by the
    /// tenant's own (a 0 removes one; one the configuration lacks is added), in `LimitScope`
    /// order like the configured ones: windows are locked in it, so two replicas counting one
    /// tenant with different snapshots of its quotas cannot deadlock.
    pub fn apply(&self, channel: Channel, configured: &[SendLimit]) -> Vec<SendLimit> {
        let mut out: Vec<SendLimit> = configured.to_vec();
        for (&(ch, window), &max) in &self.0 {
            if ch != channel {
                continue;
            }
            out.retain(|l| l.scope != window.scope());
            if max > 0 {
                out.push(SendLimit { scope: window.scope(), max, window_secs: window.secs(), own: true });
            }
        }
        out.sort_by_key(|l| l.scope);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tenants_quotas_replace_the_configured_ones() {
        let configured = [
            SendLimit { scope: LimitScope::Recipient, max: 3, window_secs: 3600, own: false },
            SendLimit { scope: LimitScope::TenantMinute, max: 100, window_secs: 60, own: false },
        ];
        let q = Quotas::from_json(
            &json!({"sms.per_minute": 0, "sms.per_day": 500, "email.per_minute": 7, "fax.per_day": 1}),
        );
        let sms = q.apply(Channel::Sms, &configured);
        assert_eq!(
            sms,
            vec![configured[0], SendLimit { scope: LimitScope::TenantDay, max: 500, window_secs: 86_400, own: true }]
        );
        assert_eq!(sms[1].key(Channel::Sms), "tenant quota sms.per_day");
        assert_eq!(configured[1].describe(Channel::Sms), "channels.sms.tenant_per_minute: 100 per 60 s");
        let email = q.apply(Channel::Email, &configured);
        assert_eq!(email[1], SendLimit { scope: LimitScope::TenantMinute, max: 7, window_secs: 60, own: true });
        assert_eq!(q.apply(Channel::Push, &configured), configured.to_vec());
        assert_eq!(parse_quota_key("push.per_day"), Ok((Channel::Push, Window::Day)));
        assert!(parse_quota_key("sms.per_week").unwrap_err().contains("per_week"));
        assert!(parse_quota_key("fax.per_day").unwrap_err().contains("fax"));
        assert_eq!(quota_key(Channel::Sms, Window::Minute), "sms.per_minute");
    }
}
