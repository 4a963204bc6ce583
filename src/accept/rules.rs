//! What acceptance takes from the configuration, read once at start rather than from
//! `Settings` on every request: who may be sent to where (private networks), how SMS numbers
//! and texts are read, how big content may be, which `from` domains are allowed, whether a
//! callback can be signed without a tenant secret, and how many attempts each channel gets.

use crate::config::{ProviderKind, Settings};
use crate::domain::notification::ParseOptions;
use crate::domain::template::{Book, RenderBudget};
use crate::domain::{Channel, content};
use crate::store::keys::Caller;

pub struct AcceptRules {
    /// Web Push endpoints must be public https unless a `web_push` provider allows otherwise.
    allow_private_push: bool,
    allow_private_callbacks: bool,
    sms_region: Option<phonenumber::country::Id>,
    sms_max_segments: Option<u32>,
    caps: content::Caps,
    /// `channels.email.sender_domains`; a tenant's own list replaces it.
    sender_domains: Option<Vec<String>>,
    /// `callbacks.signing_secret` is set: every tenant's callbacks can be signed.
    pub(super) shared_signing_secret: bool,
    /// By `Channel::index`.
    max_attempts: [u32; 3],
}

impl AcceptRules {
    pub fn new(settings: &Settings) -> AcceptRules {
        AcceptRules {
            allow_private_push: settings
                .providers
                .values()
                .any(|p| p.kind() == ProviderKind::WebPush && p.common.allow_private_networks),
            allow_private_callbacks: settings.callbacks.allow_private_networks,
            sms_region: settings.channels.sms.default_region.as_deref().and_then(crate::domain::sms::region),
            sms_max_segments: settings.channels.sms.max_segments,
            caps: settings.content_caps(),
            sender_domains: settings.channels.email.sender_domains.clone(),
            shared_signing_secret: !settings.callbacks.signing_secret.is_empty(),
            max_attempts: Channel::ALL.map(|c| settings.max_attempts(c)),
        }
    }

    /// What parsing needs for `caller`'s request, over the templates it refers to and its
    /// rendering budget: once per request (a batch's items share it).
    pub fn parse_options<'a>(
        &'a self,
        caller: &'a Caller,
        templates: &'a Book,
        budget: &'a RenderBudget,
    ) -> ParseOptions<'a> {
        ParseOptions {
            now: time::OffsetDateTime::now_utc(),
            allow_private_push: self.allow_private_push,
            allow_private_callbacks: self.allow_private_callbacks,
            sms_region: self.sms_region,
            sms_max_segments: self.sms_max_segments,
            caps: self.caps,
            sender_domains: caller.sender_domains.as_deref().or(self.sender_domains.as_deref()),
            templates,
            render_budget: budget,
        }
    }

    /// The content rules alone, for `caller`: what a template preview checks its render with.
    pub fn content_rules<'a>(&'a self, caller: &'a Caller) -> content::Rules<'a> {
        content::Rules {
            allow_private_links: self.allow_private_callbacks,
            sms_max_segments: self.sms_max_segments,
            caps: self.caps,
            sender_domains: caller.sender_domains.as_deref().or(self.sender_domains.as_deref()),
        }
    }

    pub fn max_attempts(&self, channel: Channel) -> u32 {
        self.max_attempts[channel.index()]
    }
}
