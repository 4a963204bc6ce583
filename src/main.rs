//! The `herald` binary: parse the command line, load settings, start logging, run a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald::app::{self, App, AppError, Roles};
use herald::config::Settings;
use herald::domain::{ApiKeyId, tenant, webhook};
use herald::store::{self, keys};

const AFTER_HELP: &str = "Every command but `dev`, `healthcheck` and `openapi` needs the database: DATABASE_URL \
     (e.g. postgres://herald@127.0.0.1:5432/herald) or database.url in the config. `herald dev` \
     prints the DATABASE_URL it uses.\n\
     Configuration: config/default.toml (built in), then --config FILE or HERALD_CONFIG, then \
     HERALD__SECTION__KEY variables (e.g. HERALD__SERVER__LISTEN=0.0.0.0:9000).";

#[derive(Parser)]
#[command(
    name = "herald",
    version = herald::VERSION,
    about = "Notifications over HTTP: PostgreSQL queue, email/SMS/push providers",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Config file overlaid on the defaults (also HERALD_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Listen {
    /// Address the API listens on, e.g. 127.0.0.1:8081 (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// API and dispatch workers in one process.
    Serve(Listen),
    /// The HTTP API only.
    Api(Listen),
    /// Dispatch workers only (binds no port).
    Worker,
    /// Apply database migrations.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Zero-setup local run: finds or starts a PostgreSQL, sends everything to the `log`
    /// provider, prints a dev API key and the DATABASE_URL the other commands need.
    Dev {
        /// Always start a throwaway PostgreSQL (its data is lost on exit), even if one is reachable.
        #[arg(long)]
        throwaway_db: bool,
        #[command(flatten)]
        listen: Listen,
    },
    /// Exit 0 when the local server answers /readyz (for container health checks).
    Healthcheck,
    /// Print a link that signs a browser into the dashboard (/ops) with the read scope of a
    /// tenant: signed by the server, good once, for 15 minutes at most; it holds no API key.
    OpsLink {
        /// The tenant whose notifications the dashboard shows.
        #[arg(long)]
        tenant: String,
        /// Minutes the link is good for (1 to 15).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=15))]
        minutes: u32,
    },
    /// Print the OpenAPI document that /openapi.json serves (no server or database needed),
    /// for client generators in a build.
    Openapi,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key (and the tenant if missing); prints the key once, as the last line.
    Create {
        /// The tenant the key acts for (created if missing, with its own callback signing secret).
        #[arg(long, value_name = "TENANT")]
        tenant: String,
        /// Comma-separated: send, read, admin.
        #[arg(long, default_value = "send,read")]
        scopes: String,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as `keys list` shows it (not the key itself).
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Subcommand)]
enum TenantsCmd {
    /// Create or update a tenant's defaults.
    Set {
        /// The tenant's name (created if missing).
        #[arg(value_name = "TENANT")]
        tenant: String,
        /// Where the tenant's status callbacks go when a notification names no callback_url.
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// A Standard Webhooks secret (`whsec_…`) to sign this tenant's callbacks with.
        #[arg(long, value_name = "SECRET", conflicts_with = "rotate_signing_secret")]
        signing_secret: Option<String>,
        /// Replace the tenant's signing secret with a new one, printed once.
        #[arg(long)]
        rotate_signing_secret: bool,
        /// The tenant's API request limit per second, over every replica (0: none); without
        /// it the tenant has `limits.requests_per_second`.
        #[arg(long, value_name = "N")]
        requests_per_second: Option<u32>,
        /// The tenant's own send quota, replacing `channels.X.tenant_per_minute` or
        /// `tenant_per_day` for it: `sms.per_day=1000` (0: none; `default`: the configured
        /// one again). Repeatable.
        #[arg(long = "quota", value_name = "CHANNEL.WINDOW=N")]
        quotas: Vec<String>,
        /// The email domains the tenant's `from` may use, subdomains included (`a.com,b.com`),
        /// replacing `channels.email.sender_domains` for it; `-` clears its own list.
        #[arg(long, value_name = "DOMAINS")]
        sender_domains: Option<String>,
    },
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Lambda starts a custom runtime with no arguments.
    if herald::lambda::is_lambda() && std::env::args_os().len() == 1 {
        let result = runtime.block_on(async {
            let settings = Settings::load(None)?;
            herald::telemetry::init(&settings);
            herald::lambda::run(settings).await
        });
        herald::telemetry::shutdown();
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    herald::telemetry::shutdown();
    code
}

fn load(cli: &Cli) -> Result<Settings, AppError> {
    let settings = Settings::load(cli.config.as_deref())?;
    herald::telemetry::init(&settings);
    Ok(settings)
}

/// The app, with its database reachable (or an error that says which one, as whom, and what
/// to do).
async fn connected(cli: &Cli) -> Result<App, AppError> {
    let app = App::build(load(cli)?)?;
    app.check_database().await?;
    Ok(app)
}

fn name_arg(name: &str) -> Result<(), AppError> {
    tenant::check_name(name).map_err(AppError::Usage)
}

/// `--sender-domains a.com,b.com` (`-`: none of its own).
fn sender_domains_arg(arg: &str) -> Result<Option<Vec<String>>, AppError> {
    if arg == "-" {
        return Ok(None);
    }
    let domains: Vec<String> = arg.split(',').map(|d| d.trim().to_ascii_lowercase()).collect();
    for d in &domains {
        herald::domain::content::check_domain(d).map_err(|e| AppError::Usage(format!("--sender-domains: {e}")))?;
    }
    Ok(Some(domains))
}

/// `--quota sms.per_day=1000`: the quota's key and its number (`default`: `None`).
fn quota_arg(arg: &str) -> Result<(String, Option<u32>), AppError> {
    let usage = |e: String| AppError::Usage(format!("--quota {arg}: {e}"));
    let (key, n) =
        arg.split_once('=').ok_or_else(|| usage("expected CHANNEL.WINDOW=N, e.g. sms.per_day=1000".into()))?;
    herald::domain::send_limit::parse_quota_key(key).map_err(usage)?;
    let n = match n {
        "default" => None,
        n => Some(n.parse::<u32>().map_err(|_| usage(format!("`{n}` is not a count of sends (0: none; default)")))?),
    };
    Ok((key.to_owned(), n))
}

async fn run(cli: Cli) -> Result<ExitCode, AppError> {
    match &cli.command {
        Cmd::Serve(l) => serve(&cli, l, Roles { api: true, worker: true }).await,
        Cmd::Api(l) => serve(&cli, l, Roles { api: true, worker: false }).await,
        Cmd::Worker => serve(&cli, &Listen { listen: None }, Roles { api: false, worker: true }).await,
        Cmd::Migrate => {
            let app = connected(&cli).await?;
            app.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys(cmd) => keys_command(&cli, cmd).await,
        Cmd::Tenants(cmd) => tenants_command(&cli, cmd).await,
        Cmd::Dev { throwaway_db, listen } => {
            let mut settings = Settings::load_dev(cli.config.as_deref())?;
            if let Some(addr) = &listen.listen {
                settings.server.listen = addr.clone();
            }
            herald::telemetry::init(&settings);
            herald::dev::run(settings, *throwaway_db).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::OpsLink { tenant, minutes } => {
            name_arg(tenant)?;
            let app = connected(&cli).await?;
            let link = app.ops_link(tenant, *minutes, &app.base_url()).await?.ok_or_else(|| {
                AppError::Usage(format!("no tenant named {tenant}: `herald keys create --tenant {tenant}` makes one"))
            })?;
            println!("{link}");
            eprintln!("Opens the dashboard with tenant {tenant}'s read scope; works once, within {minutes} minutes.");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Openapi => {
            let doc = serde_json::to_string_pretty(herald::http::openapi::document())
                .map_err(|e| AppError::Usage(format!("the OpenAPI document did not serialize: {e}")))?;
            println!("{doc}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Healthcheck => healthcheck(&cli).await,
    }
}

/// `herald keys create|list|revoke`.
async fn keys_command(cli: &Cli, cmd: &KeysCmd) -> Result<ExitCode, AppError> {
    let app = connected(cli).await?;
    let mut conn = store::session(&app.pool).await?;
    // What to print, once what it reports is committed (behind a pooler, at `finish`).
    let mut out = Vec::new();
    match cmd {
        KeysCmd::Create { tenant, scopes } => {
            name_arg(tenant)?;
            let parsed: Option<Vec<keys::Scope>> = scopes.split(',').map(keys::Scope::parse).collect();
            let Some(parsed) = parsed.filter(|s| !s.is_empty()) else {
                return Err(AppError::Usage(format!(
                    "--scopes `{scopes}`: use a comma-separated list of send, read, admin"
                )));
            };
            if let Some(secret) = new_tenant(&mut conn, &app.settings, tenant).await? {
                out.push(format!("created tenant {tenant}; its callback signing secret is shown only once:"));
                out.push(secret);
            }
            let (id, key) = keys::create_key(&mut conn, tenant, &parsed).await?;
            out.push(format!("created key {id} for tenant {tenant} with scopes {scopes}; it is shown only once:"));
            out.push(key);
        }
        KeysCmd::List { tenant } => {
            out.push("id\ttenant\tprefix\tscopes\tstate".into());
            for k in keys::list_keys(&mut conn, tenant.as_deref()).await? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                out.push(format!("{}\t{}\t{}…\t{}\t{}", k.id, k.tenant, k.prefix, k.scopes.join(","), state));
            }
        }
        KeysCmd::Revoke { id } => {
            let id: ApiKeyId = id
                .parse()
                .map_err(|_| AppError::Usage(format!("`{id}` is not a key id: use an id from `herald keys list`")))?;
            if !keys::revoke_key(&mut conn, id).await? {
                return Err(AppError::Usage(format!("no active key {id}")));
            }
            out.push(format!("revoked {id}"));
        }
    }
    conn.finish().await?;
    for line in out {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `herald tenants set`: a tenant's callback URL, signing secret, request rate, send quotas
/// and sender domains.
async fn tenants_command(cli: &Cli, cmd: &TenantsCmd) -> Result<ExitCode, AppError> {
    let TenantsCmd::Set {
        tenant,
        callback_url,
        signing_secret,
        rotate_signing_secret,
        requests_per_second,
        quotas,
        sender_domains,
    } = cmd;
    name_arg(tenant)?;
    let quotas = quotas.iter().map(|q| quota_arg(q)).collect::<Result<Vec<_>, _>>()?;
    let sender_domains = sender_domains.as_deref().map(sender_domains_arg).transpose()?;
    let app = connected(cli).await?;
    if let Some(u) = callback_url {
        let allow_private = app.settings.callbacks.allow_private_networks;
        herald::domain::recipient::check_endpoint(u, allow_private).map_err(|e| {
            let how = if allow_private {
                ""
            } else {
                " (an http:// URL or a private address needs callbacks.allow_private_networks = true \
                 in the config file, given with --config or HERALD_CONFIG)"
            };
            AppError::Usage(format!("--callback-url: {e}{how}"))
        })?;
    }
    if let Some(s) = signing_secret {
        webhook::signing_key(s).map_err(|e| AppError::Usage(format!("--signing-secret: {e}")))?;
    }
    let mut conn = store::session(&app.pool).await?;
    // A new tenant gets a secret of its own (unless one is given or shared); a rotation
    // replaces it. Either is printed once: only Herald and the tenant hold it.
    let rotated = rotate_signing_secret.then(webhook::new_signing_secret);
    let created = match (signing_secret, &rotated) {
        (None, None) => new_tenant(&mut conn, &app.settings, tenant).await?,
        _ => None,
    };
    let secret = signing_secret.as_deref().or(rotated.as_deref());
    let changes = keys::TenantChanges {
        callback_url: callback_url.as_deref(),
        signing_secret: secret,
        requests_per_second: *requests_per_second,
        quotas,
        sender_domains,
    };
    let keys::TenantSet { id, own_quotas, woken } = keys::set_tenant(&mut conn, tenant, &changes).await?;
    conn.finish().await?;
    if woken > 0 {
        println!("{woken} deferred sends are due again under the new quota");
    }
    let shown = rotated.or(created);
    println!("tenant {tenant} ({id}) updated");
    if own_quotas.as_object().is_some_and(|q| !q.is_empty()) {
        println!("its own send quotas: {own_quotas}");
    }
    if let Some(s) = shown {
        println!("its callback signing secret is shown only once:");
        println!("{s}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `herald healthcheck`: is this configuration's server ready (a container's health check).
async fn healthcheck(cli: &Cli) -> Result<ExitCode, AppError> {
    let settings = Settings::load(cli.config.as_deref())?;
    let addr = settings.server.listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let url = format!("http://{addr}/readyz");
    let ok = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if ok {
        println!("ready");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("not ready: {url}");
        Ok(ExitCode::FAILURE)
    }
}

/// Create `tenant` if it does not exist (see `keys::create_tenant_for`); the new secret, to
/// show once.
async fn new_tenant(
    conn: &mut sqlx::PgConnection,
    settings: &Settings,
    tenant: &str,
) -> Result<Option<String>, AppError> {
    Ok(keys::create_tenant_for(conn, tenant, !settings.callbacks.signing_secret.is_empty()).await?)
}

async fn serve(cli: &Cli, listen: &Listen, roles: Roles) -> Result<ExitCode, AppError> {
    let mut settings = load(cli)?;
    if let Some(addr) = &listen.listen {
        settings.server.listen = addr.clone();
    }
    let app = App::build(settings)?;
    let listener = if roles.api { Some(app.bind().await?) } else { None };
    app.run_on(listener, roles, app::shutdown_token()).await?;
    Ok(ExitCode::SUCCESS)
}
