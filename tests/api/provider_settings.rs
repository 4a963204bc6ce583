//! Provider settings that point at the fakes in `fake_http`, with the credentials they check.

use herald::config::{ProviderKind, ProviderSettings, Secret};

use crate::fake_http;

pub fn sendgrid(origin: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(ProviderKind::Sendgrid);
    p.base_url = Some(origin.into());
    p.api_key = Some(Secret::new(fake_http::SENDGRID_KEY));
    p.from = Some("Acme <noreply@acme.test>".into());
    p
}

pub fn ses(origin: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(ProviderKind::Ses);
    p.base_url = Some(origin.into());
    p.region = Some("eu-west-1".into());
    p.access_key_id = Some(fake_http::SES_KEY_ID.into());
    p.secret_access_key = Some(Secret::new(fake_http::SES_SECRET));
    p.from = Some("noreply@acme.test".into());
    p.configuration_set = Some("herald".into());
    p
}

pub fn mailgun(origin: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(ProviderKind::Mailgun);
    p.base_url = Some(origin.into());
    p.api_key = Some(Secret::new(fake_http::MAILGUN_KEY));
    p.domain = Some(fake_http::MAILGUN_DOMAIN.into());
    p.from = Some("Acme <noreply@acme.test>".into());
    p
}

pub fn twilio(origin: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(ProviderKind::Twilio);
    p.base_url = Some(origin.into());
    p.account_sid = Some(fake_http::TWILIO_SID.into());
    p.auth_token = Some(Secret::new(fake_http::TWILIO_TOKEN));
    p.from = Some("+15005550006".into());
    p
}

pub fn vonage(origin: &str) -> ProviderSettings {
    let mut p = ProviderSettings::new(ProviderKind::Vonage);
    p.base_url = Some(origin.into());
    p.api_key = Some(Secret::new(fake_http::VONAGE_KEY));
    p.api_secret = Some(Secret::new(fake_http::VONAGE_SECRET));
    p.from = Some("Acme".into());
    p
}
