//! Loading settings: layers, errors that name the key, provider sections.

use super::*;
use figment::Jail;

#[test]
fn defaults_load() {
    Jail::expect_with(|_| {
        let s = Settings::from_figment(&Settings::figment(None)).expect("defaults are valid");
        assert_eq!(s.dispatch.concurrency, 256);
        assert!(s.providers.is_empty());
        Ok(())
    });
}

#[test]
fn env_overrides_file_and_names_the_bad_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "h.toml",
            "[dispatch]\nconcurrency = 4\n[providers.m]\nkind = \"log\"\n[channels.sms]\nproviders = [\"m\"]\n",
        )?;
        jail.set_env("HERALD__DISPATCH__BATCH_SIZE", "7");
        jail.set_env("DATABASE_URL", "postgres://u:pw@h/db");
        let s = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).expect("valid");
        assert_eq!((s.dispatch.concurrency, s.dispatch.batch_size), (4, 7));
        assert_eq!(s.database.url.expose(), "postgres://u:pw@h/db");
        assert!(!format!("{s:?}").contains("pw@"), "secrets stay out of Debug");

        jail.set_env("HERALD__DISPATCH__CONCURRENCY", "lots");
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("dispatch.concurrency"), "{err}");
        Ok(())
    });
}

#[test]
fn unknown_provider_in_a_channel_is_named() {
    Jail::expect_with(|jail| {
        jail.create_file("h.toml", "[channels.email]\nproviders = [\"mail\"]\n")?;
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("channels.email.providers[0]") && err.contains("mail"), "{err}");
        Ok(())
    });
}

#[test]
fn smtp_cannot_carry_sms_and_password_file_is_read() {
    Jail::expect_with(|jail| {
        jail.create_file("pw", "s3cret\n")?;
        jail.create_file(
            "h.toml",
            "[providers.m]\nkind = \"smtp\"\nhost = \"x\"\nfrom = \"a@b.cd\"\nusername = \"u\"\npassword_file = \"pw\"\n[channels.sms]\nproviders = [\"m\"]\n",
        )?;
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("cannot send sms"), "{err}");
        jail.create_file(
            "h.toml",
            "[providers.m]\nkind = \"smtp\"\nhost = \"x\"\nfrom = \"a@b.cd\"\nusername = \"u\"\npassword_file = \"pw\"\n",
        )?;
        let s = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).expect("valid");
        let crate::providers::ProviderConfig::Smtp(smtp) = &s.providers["m"].vendor else { panic!("smtp") };
        assert_eq!(smtp.password.as_ref().map(Secret::expose), Some("s3cret"));
        Ok(())
    });
}

#[test]
fn provider_keys_are_checked_per_kind() {
    Jail::expect_with(|jail| {
        let check = |jail: &mut Jail, toml: &str| {
            jail.create_file("h.toml", toml).expect("file");
            Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).map(|_| ()).map_err(|e| e.to_string())
        };
        let err = check(jail, "[providers.sg]\nkind = \"sendgrid\"\nfrom = \"a@b.cd\"\n").expect_err("no key");
        assert!(err.contains("providers.sg.api_key") && err.contains("required"), "{err}");
        let err = check(
            jail,
            "[providers.sg]\nkind = \"sendgrid\"\napi_key = \"k\"\nfrom = \"a@b.cd\"\naccount_sid = \"AC1\"\n",
        )
        .expect_err("foreign key");
        assert!(err.contains("providers.sg.account_sid") && err.contains("not a setting of kind sendgrid"), "{err}");
        let err = check(jail, "[providers.tw]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\n")
            .expect_err("no from");
        assert!(err.contains("providers.tw.from"), "{err}");
        let err = check(jail, "[providers.x]\nkind = \"carrier-pigeon\"\n").expect_err("kind");
        assert!(err.contains("providers.x.kind") || err.contains("carrier-pigeon"), "{err}");
        let err = check(jail, "[providers.sg]\nkind = \"sendgrid\"\napi_key = \"k\"\nfrom = \"a@b.cd\"\nbase_url = \"https://x.test/v3\"\n")
            .expect_err("path in base_url");
        assert!(err.contains("providers.sg.base_url"), "{err}");
        check(jail, "[providers.tw]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token_file = \"tok\"\nfrom = \"+15005550006\"\n")
            .expect_err("missing file");
        jail.create_file("tok", "secret")?;
        check(jail, "[providers.tw]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token_file = \"tok\"\nfrom = \"+15005550006\"\nmax_per_second = 5.0\n[channels.sms]\nproviders = [\"tw\"]\n")
            .expect("valid twilio");
        // A bad value inside a section names its key and where it came from.
        let err = check(jail, "[providers.m]\nkind = \"smtp\"\nhost = \"x\"\nfrom = \"a@b.cd\"\nport = \"high\"\n")
            .expect_err("port");
        assert!(err.contains("providers.m.port") && err.contains("(from h.toml)"), "{err}");
        let err = check(jail, "[providers.m]\nkind = \"log\"\ntimeout_ms = 0\n").expect_err("timeout");
        assert!(err.contains("providers.m.timeout_ms") && err.contains("at least 1"), "{err}");
        let err = check(jail, "[providers.sg]\nkind = \"sendgrid\"\napi_key = \"\"\nfrom = \"a@b.cd\"\n")
            .expect_err("empty key");
        assert!(err.contains("providers.sg.api_key") && err.contains("must not be empty"), "{err}");
        let err = check(jail, "[providers.tw]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nauth_token_file = \"tok\"\nfrom = \"+1\"\n")
            .expect_err("both");
        assert!(err.contains("providers.tw.auth_token_file") && err.contains("not both"), "{err}");
        Ok(())
    });
}

#[test]
fn provider_keys_come_from_the_environment_too() {
    Jail::expect_with(|jail| {
        jail.create_file("h.toml", "[providers.sg]\nkind = \"sendgrid\"\nfrom = \"a@b.cd\"\n")?;
        jail.set_env("HERALD__PROVIDERS__SG__API_KEY", "SG.from-env");
        jail.set_env("HERALD__PROVIDERS__SG__TIMEOUT_MS", "1234");
        let s = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).expect("valid");
        let sg = &s.providers["sg"];
        let crate::providers::ProviderConfig::Sendgrid(c) = &sg.vendor else { panic!("sendgrid") };
        assert_eq!((c.api_key.expose(), sg.common.timeout_ms), ("SG.from-env", 1234));
        jail.set_env("HERALD__PROVIDERS__SG__BASE_URL", "https://x.test/v3");
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("providers.sg.base_url") && err.contains("HERALD__"), "{err}");
        Ok(())
    });
}

#[test]
fn an_e164_sender_from_the_environment_keeps_its_plus() {
    Jail::expect_with(|jail| {
        // An E.164 sender keeps its `+` (figment alone reads it as a number).
        jail.create_file(
            "t.toml",
            "[providers.tw]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"x\"\n",
        )?;
        jail.set_env("HERALD__PROVIDERS__TW__FROM", "+15005550006");
        let s = Settings::from_figment(&Settings::figment(Some(Path::new("t.toml")))).expect("valid");
        let crate::providers::ProviderConfig::Twilio(tw) = &s.providers["tw"].vendor else { panic!("twilio") };
        assert_eq!(tw.from.as_ref().map(crate::providers::settings::NonEmpty::as_str), Some("+15005550006"));
        Ok(())
    });
}

#[test]
fn typos_in_keys_are_refused() {
    Jail::expect_with(|jail| {
        jail.create_file("h.toml", "[dispatch]\nconcurency = 4\n")?;
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("concurency"), "{err}");
        Ok(())
    });
}

#[test]
fn send_limits_are_off_by_default_and_checked() {
    Jail::expect_with(|jail| {
        let s = Settings::from_figment(&Settings::figment(None)).expect("defaults are valid");
        assert!(Channel::ALL.iter().all(|c| s.channels.get(*c).send_limits().is_empty()), "off unless configured");

        jail.create_file(
            "h.toml",
            "[channels.sms]\nrecipient_max = 3\nrecipient_window_secs = 600\ntenant_per_day = 1000\n",
        )?;
        let s = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).expect("valid");
        let limits = s.channels.sms.send_limits();
        assert_eq!(limits.len(), 2);
        assert_eq!((limits[0].max, limits[0].window_secs), (3, 600));
        assert_eq!((limits[1].scope, limits[1].max, limits[1].window_secs), (LimitScope::TenantDay, 1000, 86_400));

        jail.set_env("HERALD__CHANNELS__SMS__RECIPIENT_WINDOW_SECS", "0");
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("channels.sms.recipient_window_secs"), "{err}");
        jail.set_env("HERALD__CHANNELS__SMS__RECIPIENT_WINDOW_SECS", "60");
        jail.set_env("HERALD__CHANNELS__SMS__TENANT_PER_MINUTE", "-1");
        let err = Settings::from_figment(&Settings::figment(Some(Path::new("h.toml")))).unwrap_err().to_string();
        assert!(err.contains("channels.sms.tenant_per_minute"), "{err}");
        Ok(())
    });
}

/// What a newcomer meets first: a config file that is missing or not TOML is named with how
/// it was given; an unknown provider key is named once, with the kind's keys; a bad value is
/// said without Rust's types, and without nested backticks.
#[test]
fn config_mistakes_are_named_in_plain_words() {
    Jail::expect_with(|jail| {
        let err = Settings::load(Some(Path::new("nope.toml"))).unwrap_err().to_string();
        assert!(err.starts_with("cannot read the config file nope.toml (given with --config):"), "{err}");
        jail.set_env("HERALD_CONFIG", "gone.toml");
        let err = Settings::load(None).unwrap_err().to_string();
        assert!(err.contains("gone.toml (given with HERALD_CONFIG)"), "{err}");
        jail.create_file("broken.toml", "server = [\n")?;
        let err = Settings::load(Some(Path::new("broken.toml"))).unwrap_err().to_string();
        assert!(err.contains("broken.toml (given with --config): not valid TOML") && err.contains("line 1"), "{err}");

        jail.create_file(
            "h.toml",
            "[providers.mail]\nkind = \"smtp\"\nhost = \"h\"\nhostname = \"h\"\nfrom = \"a@b.cd\"\n",
        )?;
        let err = Settings::load(Some(Path::new("h.toml"))).unwrap_err().to_string();
        assert!(err.contains("`providers.mail.hostname`:") && !err.contains("hostname.hostname"), "{err}");
        assert!(err.contains("its settings are host, from, port"), "{err}");

        jail.create_file(
            "p.toml",
            "[providers.mail]\nkind = \"smtp\"\nhost = \"h\"\nport = \"2525x\"\nfrom = \"a@b.cd\"\n",
        )?;
        let err = Settings::load(Some(Path::new("p.toml"))).unwrap_err().to_string();
        assert!(err.contains("\"2525x\" is not a whole number (0 to 65535)") && err.contains("(from"), "{err}");
        assert!(!err.contains("u16"), "{err}");
        jail.create_file("s.toml", "[server]\nlistn = \"x\"\n")?;
        let err = Settings::load(Some(Path::new("s.toml"))).unwrap_err().to_string();
        assert!(err.contains("`server.listn`: is not a setting here; the settings are listen, "), "{err}");
        assert_eq!(err.matches('`').count(), 2, "only the key is quoted: {err}");
        Ok(())
    });
}
