//! Checking a `[providers.NAME]` section: every key belongs to its kind, the required ones are
//! there, values are well formed, and `<secret>_file` keys are read into their secrets. Errors
//! name the key (`providers.NAME.KEY`).

use std::path::PathBuf;

use super::{ApnsEnvironment, ChaosClass, ProviderKind, ProviderSettings, SmtpTls, default_pool};
use crate::config::{ConfigError, Secret, invalid, read_secret};

impl ProviderSettings {
    /// Which provider-specific keys are set: (key, set?).
    fn set_keys(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("base_url", self.base_url.is_some()),
            ("from", self.from.is_some()),
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("tls", self.tls != SmtpTls::default()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("password_file", self.password_file.is_some()),
            ("pool_max_size", self.pool_max_size != default_pool()),
            ("api_key", self.api_key.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
            ("domain", self.domain.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("secret_access_key_file", self.secret_access_key_file.is_some()),
            ("session_token", self.session_token.is_some()),
            ("configuration_set", self.configuration_set.is_some()),
            ("account_sid", self.account_sid.is_some()),
            ("auth_token", self.auth_token.is_some()),
            ("auth_token_file", self.auth_token_file.is_some()),
            ("messaging_service_sid", self.messaging_service_sid.is_some()),
            ("api_secret", self.api_secret.is_some()),
            ("api_secret_file", self.api_secret_file.is_some()),
            ("signature_secret", self.signature_secret.is_some()),
            ("signature_secret_file", self.signature_secret_file.is_some()),
            ("service_account_file", self.service_account_file.is_some()),
            ("service_account_json", self.service_account_json.is_some()),
            ("team_id", self.team_id.is_some()),
            ("key_id", self.key_id.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
            ("topic", self.topic.is_some()),
            ("environment", self.environment != ApnsEnvironment::default()),
            ("vapid_private_key", self.vapid_private_key.is_some()),
            ("vapid_private_key_file", self.vapid_private_key_file.is_some()),
            ("vapid_subject", self.vapid_subject.is_some()),
            ("url", self.url.is_some()),
            ("signing_secret", self.signing_secret.is_some()),
            ("signing_secret_file", self.signing_secret_file.is_some()),
            ("webhook_public_key", self.webhook_public_key.is_some()),
            ("webhook_signing_key", self.webhook_signing_key.is_some()),
            ("webhook_signing_key_file", self.webhook_signing_key_file.is_some()),
            ("signature_method", self.signature_method.is_some()),
            ("sns_topic_arns", !self.sns_topic_arns.is_empty()),
            ("sns_cert_hosts", !self.sns_cert_hosts.is_empty()),
            ("latency_ms", self.latency_ms != 0),
            ("failure_rate", self.failure_rate != 0.0),
            ("error_class", self.error_class != ChaosClass::default()),
            ("latency_jitter_ms", self.latency_jitter_ms != 0),
            ("retry_after_ms", self.retry_after_ms.is_some()),
            ("seed", self.seed.is_some()),
        ]
    }

    /// Replace each `<secret>_file` by the file's content.
    pub(in crate::config) fn resolve_secret_files(&mut self, name: &str) -> Result<(), ConfigError> {
        let pairs: [(&str, &mut Option<Secret>, &Option<PathBuf>); 9] = [
            ("signing_secret", &mut self.signing_secret, &self.signing_secret_file),
            ("webhook_signing_key", &mut self.webhook_signing_key, &self.webhook_signing_key_file),
            ("service_account_json", &mut self.service_account_json, &self.service_account_file),
            ("vapid_private_key", &mut self.vapid_private_key, &self.vapid_private_key_file),
            ("password", &mut self.password, &self.password_file),
            ("api_key", &mut self.api_key, &self.api_key_file),
            ("secret_access_key", &mut self.secret_access_key, &self.secret_access_key_file),
            ("auth_token", &mut self.auth_token, &self.auth_token_file),
            ("api_secret", &mut self.api_secret, &self.api_secret_file),
        ];
        for (key, secret, file) in pairs {
            if let Some(path) = file {
                // `service_account_file` is the file form of `service_account_json`.
                let file_key = match key {
                    "service_account_json" => format!("providers.{name}.service_account_file"),
                    _ => format!("providers.{name}.{key}_file"),
                };
                if secret.is_some() {
                    let file = file_key.rsplit('.').next().unwrap_or_default().to_owned();
                    return Err(invalid(file_key, format!("give either {key} or {file}, not both")));
                }
                *secret = Some(read_secret(path, &file_key)?);
            }
        }
        if let Some(path) = &self.signature_secret_file {
            let file_key = format!("providers.{name}.signature_secret_file");
            if self.signature_secret.is_some() {
                return Err(invalid(file_key, "give either signature_secret or signature_secret_file, not both"));
            }
            self.signature_secret = Some(read_secret(path, &file_key)?);
        }
        Ok(())
    }

    pub(in crate::config) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("providers.{name}.{k}");
        let (required, optional) = self.kind.keys();
        let set = self.set_keys();
        // `X_file` is allowed wherever `X` is.
        let allowed = |k: &str| {
            let base = k.strip_suffix("_file").unwrap_or(k);
            [k, base].iter().any(|x| required.contains(x) || optional.contains(x))
        };
        if let Some((k, _)) = set.iter().find(|(k, s)| *s && !allowed(k)) {
            return Err(invalid(key(k), format!("is not a setting of kind {}", self.kind.as_str())));
        }
        for k in required {
            if !set.iter().any(|(n, s)| n == k && *s) {
                return Err(invalid(key(k), format!("is required for kind {}", self.kind.as_str())));
            }
        }
        if let Some(base) = &self.base_url {
            let ok = url::Url::parse(base)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some() && matches!(u.path(), "" | "/"))
                .unwrap_or(false);
            if !ok {
                return Err(invalid(key("base_url"), "must be an origin only, such as https://api.example.com"));
            }
        }
        if let Some(u) = &self.url {
            let ok = url::Url::parse(u)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(key("url"), "must be an http(s) URL such as https://gateway.internal/notify"));
            }
        }
        if let Some(s) = &self.signing_secret
            && let Err(e) = crate::domain::webhook::signing_key(s.expose())
        {
            return Err(invalid(key("signing_secret"), e));
        }
        if let Some(from) = &self.from {
            match self.kind {
                // SMS senders are numbers or alphanumeric ids, not mailboxes.
                ProviderKind::Twilio | ProviderKind::Vonage => {
                    if from.trim().is_empty() {
                        return Err(invalid(key("from"), "must not be empty"));
                    }
                }
                _ => {
                    if let Err(e) = crate::domain::notification::parse_mailbox(from) {
                        return Err(invalid(key("from"), e));
                    }
                }
            }
        }
        if self.kind == ProviderKind::Twilio && self.from.is_none() && self.messaging_service_sid.is_none() {
            return Err(invalid(key("from"), "kind twilio needs from or messaging_service_sid"));
        }
        if self.kind == ProviderKind::Fcm && self.service_account_json.is_none() {
            return Err(invalid(
                key("service_account_file"),
                "kind fcm needs service_account_file or service_account_json",
            ));
        }
        if self.kind == ProviderKind::Smtp {
            if self.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err(invalid(key("host"), "must not be empty"));
            }
            if self.password.is_some() && self.username.is_none() {
                return Err(invalid(key("username"), "is required when a password is set"));
            }
        }
        for (k, secret) in [
            ("password", &self.password),
            ("api_key", &self.api_key),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
            ("auth_token", &self.auth_token),
            ("api_secret", &self.api_secret),
            ("signature_secret", &self.signature_secret),
            ("webhook_signing_key", &self.webhook_signing_key),
            ("service_account_json", &self.service_account_json),
            ("vapid_private_key", &self.vapid_private_key),
            ("signing_secret", &self.signing_secret),
        ] {
            if secret.as_ref().is_some_and(Secret::is_empty) {
                // An empty key would make signatures anyone can compute.
                return Err(invalid(key(k), "must not be empty"));
            }
        }
        if let Some(m) = &self.signature_method
            && !["md5hash", "md5", "sha1", "sha256", "sha512"].contains(&m.as_str())
        {
            return Err(invalid(key("signature_method"), "must be md5hash, md5, sha1, sha256 or sha512"));
        }
        // `webhook_public_key` is parsed into its key by the SendGrid provider when it is built.
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(invalid(key("failure_rate"), "must be between 0 and 1"));
        }
        if let Some(r) = self.max_per_second
            && !(r > 0.0 && r.is_finite())
        {
            return Err(invalid(key("max_per_second"), "must be a positive number"));
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid(key("max_in_flight"), "must be at least 1"));
        }
        if self.breaker_failures == 0 {
            return Err(invalid(key("breaker_failures"), "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(invalid(key("timeout_ms"), "must be at least 1"));
        }
        Ok(())
    }
}
