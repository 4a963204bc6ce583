//! Provider settings that point at the fakes in `fake_http`, with the credentials they check.

use herald::config::Secret;
use herald::providers::{mailgun, sendgrid, ses, twilio, vonage};

use crate::fake_http;

pub fn sendgrid(origin: &str) -> sendgrid::Config {
    sendgrid::Config {
        api_key: Secret::new(fake_http::SENDGRID_KEY),
        from: "Acme <noreply@acme.test>".parse().expect("sender"),
        base_url: Some(origin.parse().expect("origin")),
        webhook_public_key: None,
    }
}

pub fn ses(origin: &str) -> ses::Config {
    ses::Config {
        region: "eu-west-1".into(),
        access_key_id: fake_http::SES_KEY_ID.into(),
        secret_access_key: Secret::new(fake_http::SES_SECRET),
        from: "noreply@acme.test".parse().expect("sender"),
        session_token: None,
        configuration_set: Some("herald".into()),
        base_url: Some(origin.parse().expect("origin")),
        sns_topic_arns: Vec::new(),
        sns_cert_hosts: Vec::new(),
    }
}

pub fn mailgun(origin: &str) -> mailgun::Config {
    mailgun::Config {
        domain: fake_http::MAILGUN_DOMAIN.into(),
        api_key: Secret::new(fake_http::MAILGUN_KEY),
        from: "Acme <noreply@acme.test>".parse().expect("sender"),
        base_url: Some(origin.parse().expect("origin")),
        webhook_signing_key: None,
    }
}

pub fn twilio(origin: &str) -> twilio::Config {
    twilio::Config {
        account_sid: fake_http::TWILIO_SID.into(),
        auth_token: Secret::new(fake_http::TWILIO_TOKEN),
        from: Some("+15005550006".parse().expect("sender")),
        messaging_service_sid: None,
        base_url: Some(origin.parse().expect("origin")),
    }
}

pub fn vonage(origin: &str) -> vonage::Config {
    vonage::Config {
        api_key: Secret::new(fake_http::VONAGE_KEY),
        api_secret: Secret::new(fake_http::VONAGE_SECRET),
        from: "Acme".parse().expect("sender"),
        base_url: Some(origin.parse().expect("origin")),
        signature_secret: None,
        signature_method: None,
    }
}
