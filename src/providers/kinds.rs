//! The provider kinds: one line each, `Variant = "kind" => module::Config`. From that line come
//! the `kind = "..."` name, the `ProviderConfig` arm holding the module's typed section, how a
//! section of that kind is read, and how its adapter is built (the module's `Vendor` impl).
//! Adding a kind is a new module with a `Config: Vendor` and a line here.

use std::sync::Arc;

use figment::value::{Dict, Value};
use serde::Deserialize;

use super::settings::{BuildEnv, Common, SectionError, Vendor, keyed, parse_vendor};
use super::{Provider, apns, chaos, fcm, log, mailgun, sendgrid, ses, smtp, twilio, vonage, web_push, webhook};
use crate::domain::Channel;

macro_rules! kinds {
    ($($variant:ident = $name:literal => $config:ty,)+) => {
        /// A provider's `kind`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
        pub enum ProviderKind {
            $(#[serde(rename = $name)] $variant,)+
        }

        impl ProviderKind {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderKind::$variant => $name,)+
                }
            }

            /// Whether this kind of provider can carry `channel`.
            pub fn serves(self, channel: Channel) -> bool {
                match self {
                    $(ProviderKind::$variant => <$config as Vendor>::CHANNELS.contains(&channel),)+
                }
            }
        }

        /// A provider's own keys, typed by its kind.
        #[derive(Clone, Debug)]
        pub enum ProviderConfig {
            $($variant($config),)+
        }

        impl ProviderConfig {
            pub fn kind(&self) -> ProviderKind {
                match self {
                    $(ProviderConfig::$variant(_) => ProviderKind::$variant,)+
                }
            }

            pub(super) fn parse(kind: ProviderKind, table: Dict, section: &Value) -> Result<Self, SectionError> {
                Ok(match kind {
                    $(ProviderKind::$variant => ProviderConfig::$variant(parse_vendor($name, table, section)?),)+
                })
            }

            pub(super) fn build(
                &self,
                name: &str,
                common: &Common,
                env: &BuildEnv<'_>,
            ) -> Result<Arc<dyn Provider>, String> {
                match self {
                    $(ProviderConfig::$variant(c) => c.build(name, common, env),)+
                }
            }
        }

        $(impl From<$config> for ProviderSettings {
            fn from(c: $config) -> Self {
                ProviderSettings::new(ProviderConfig::$variant(c))
            }
        })+
    };
}

/// One `[providers.NAME]` section.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    pub common: Common,
    pub vendor: ProviderConfig,
}

impl ProviderSettings {
    pub fn new(vendor: ProviderConfig) -> Self {
        ProviderSettings { common: Common::default(), vendor }
    }

    pub fn kind(&self) -> ProviderKind {
        self.vendor.kind()
    }

    /// Read a section from figment's merged value of `providers.NAME`.
    pub fn parse(section: &Value) -> Result<Self, SectionError> {
        let Some(table) = section.as_dict() else {
            return Err(SectionError::new("", section.tag(), "must be a table of settings"));
        };
        let mut table = table.clone();
        let Some(kind) = table.remove("kind") else {
            return Err(SectionError::new("kind", section.tag(), "is required"));
        };
        let kind: ProviderKind = kind.deserialize().map_err(|e| keyed(&e, "kind", "a provider", section))?;
        let what = format!("kind {}", kind.as_str());
        let common: Dict = Common::KEYS.iter().filter_map(|k| table.remove_entry(*k)).collect();
        let common: Common = Value::from(common).deserialize().map_err(|e| keyed(&e, "", &what, section))?;
        common.check().map_err(|(key, message)| SectionError::new(key, section.tag(), message))?;
        let vendor = ProviderConfig::parse(kind, table, section)?;
        Ok(ProviderSettings { common, vendor })
    }
}

kinds! {
    Log = "log" => log::Config,
    Smtp = "smtp" => smtp::Config,
    Sendgrid = "sendgrid" => sendgrid::Config,
    Ses = "ses" => ses::Config,
    Mailgun = "mailgun" => mailgun::Config,
    Twilio = "twilio" => twilio::Config,
    Vonage = "vonage" => vonage::Config,
    Fcm = "fcm" => fcm::Config,
    Apns = "apns" => apns::Config,
    WebPush = "web_push" => web_push::Config,
    Webhook = "webhook" => webhook::Config,
    Chaos = "chaos" => chaos::Config,
}
