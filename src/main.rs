//! The `herald` binary: parse the command line, load settings, start logging, run a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::app::{self, App, AppError, Roles};
use herald::config::{LogFormat, Settings};
use herald::domain::ApiKeyId;
use herald::store::{self, keys};

#[derive(Parser)]
#[command(name = "herald", version, about = "Notifications over HTTP: PostgreSQL queue, email/SMS/push providers")]
struct Cli {
    /// Config file overlaid on the defaults (also HERALD_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// API and dispatch workers in one process.
    Serve,
    /// The HTTP API only.
    Api,
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
    /// Zero-setup local run with the `log` provider and a printed API key.
    Dev {
        /// Always start a throwaway PostgreSQL, even if one is reachable.
        #[arg(long)]
        throwaway_db: bool,
    },
    /// Exit 0 when the local server answers /readyz (for container health checks).
    Healthcheck,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key (and the tenant if missing); prints the key once, as the last line.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: send, read, admin.
        #[arg(long, default_value = "send,read")]
        scopes: String,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TenantsCmd {
    /// Create or update a tenant's defaults.
    Set {
        tenant: String,
        #[arg(long)]
        callback_url: Option<String>,
        /// A Standard Webhooks secret (`whsec_…`) to sign this tenant's callbacks with.
        #[arg(long, conflicts_with = "rotate_signing_secret")]
        signing_secret: Option<String>,
        /// Replace the tenant's signing secret with a new one, printed once.
        #[arg(long)]
        rotate_signing_secret: bool,
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
            herald::telemetry::init(settings.log.format, &settings.log.level);
            herald::lambda::run(settings).await
        });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Settings, AppError> {
    let settings = Settings::load(cli.config.as_deref())?;
    herald::telemetry::init(settings.log.format, &settings.log.level);
    Ok(settings)
}

async fn run(cli: Cli) -> Result<ExitCode, AppError> {
    match &cli.command {
        Cmd::Serve => serve(&cli, Roles { api: true, worker: true }).await,
        Cmd::Api => serve(&cli, Roles { api: true, worker: false }).await,
        Cmd::Worker => serve(&cli, Roles { api: false, worker: true }).await,
        Cmd::Migrate => {
            let app = App::build(load(&cli)?)?;
            store::migrate(&app.pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys(cmd) => {
            let app = App::build(load(&cli)?)?;
            let mut conn = app.pool.acquire().await?;
            match cmd {
                KeysCmd::Create { tenant, scopes } => {
                    let parsed: Option<Vec<keys::Scope>> = scopes.split(',').map(keys::Scope::parse).collect();
                    let Some(parsed) = parsed.filter(|s| !s.is_empty()) else {
                        return Err(AppError::Other(format!(
                            "--scopes `{scopes}`: use a comma-separated list of send, read, admin"
                        )));
                    };
                    if let Some(secret) = new_tenant(&mut conn, &app.settings, tenant).await? {
                        println!("created tenant {tenant}; its callback signing secret is shown only once:");
                        println!("{secret}");
                    }
                    let (id, key) = keys::create_key(&mut conn, tenant, &parsed).await?;
                    println!("created key {id} for tenant {tenant} with scopes {scopes}; it is shown only once:");
                    println!("{key}");
                }
                KeysCmd::List { tenant } => {
                    for k in keys::list_keys(&mut conn, tenant.as_deref()).await? {
                        let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                        println!("{}\t{}\t{}…\t{}\t{}", k.id, k.tenant, k.prefix, k.scopes.join(","), state);
                    }
                }
                KeysCmd::Revoke { id } => {
                    let id: ApiKeyId = id.parse().map_err(|_| AppError::Other(format!("`{id}` is not a key id")))?;
                    if !keys::revoke_key(&mut conn, id).await? {
                        return Err(AppError::Other(format!("no active key {id}")));
                    }
                    println!("revoked {id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tenants(TenantsCmd::Set { tenant, callback_url, signing_secret, rotate_signing_secret }) => {
            let app = App::build(load(&cli)?)?;
            if let Some(u) = callback_url {
                herald::domain::recipient::check_endpoint(u, app.settings.callbacks.allow_private_networks)
                    .map_err(|e| AppError::Other(format!("--callback-url: {e}")))?;
            }
            // The same rule as callbacks.signing_secret: a key callbacks can actually sign with.
            if signing_secret.as_deref().is_some_and(|s| herald::dispatch::callbacks::secret_key(s).is_none()) {
                return Err(AppError::Other(
                    "--signing-secret: must be a Standard Webhooks secret: whsec_ followed by base64".into(),
                ));
            }
            let mut conn = app.pool.acquire().await?;
            // A new tenant gets a secret of its own (unless one is given or shared); a rotation
            // replaces it. Either is printed once: only Herald and the tenant hold it.
            let rotated = rotate_signing_secret.then(herald::dispatch::callbacks::new_secret);
            let created = match (signing_secret, &rotated) {
                (None, None) => new_tenant(&mut conn, &app.settings, tenant).await?,
                _ => None,
            };
            let secret = signing_secret.as_deref().or(rotated.as_deref());
            let id = keys::set_tenant(&mut conn, tenant, callback_url.as_deref(), secret).await?;
            let shown = rotated.or(created);
            println!("tenant {tenant} ({id}) updated");
            if let Some(s) = shown {
                println!("its callback signing secret is shown only once:");
                println!("{s}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dev { throwaway_db } => dev(&cli, *throwaway_db).await,
        Cmd::Healthcheck => {
            let settings = Settings::load(cli.config.as_deref())?;
            let addr = settings.server.listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
            let url = format!("http://{addr}/readyz");
            let ok = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                println!("ready");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("not ready: {url}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Create `tenant` if it does not exist, with a callback signing secret of its own unless
/// `callbacks.signing_secret` is set (the operator's choice of one secret shared by every
/// tenant without its own). Returns the new secret, to show once.
async fn new_tenant(
    conn: &mut sqlx::PgConnection,
    settings: &Settings,
    tenant: &str,
) -> Result<Option<String>, AppError> {
    let secret = settings.callbacks.signing_secret.is_empty().then(herald::dispatch::callbacks::new_secret);
    let created = keys::create_tenant(conn, tenant, secret.as_deref()).await?;
    Ok(secret.filter(|_| created))
}

async fn serve(cli: &Cli, roles: Roles) -> Result<ExitCode, AppError> {
    let app = App::build(load(cli)?)?;
    app.run(roles, app::shutdown_token()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn dev(cli: &Cli, throwaway_db: bool) -> Result<ExitCode, AppError> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if settings.log.format == LogFormat::Json {
        settings.log.format = LogFormat::Pretty;
    }
    herald::telemetry::init(settings.log.format, &settings.log.level);
    // Keep the throwaway cluster (if any) alive until we return: dropping it stops it.
    let _pg = if settings.database.url.is_empty() || throwaway_db {
        let pg = herald::dev::local_postgres(throwaway_db).await?;
        let url = if pg.is_throwaway() {
            pg.admin_url.clone()
        } else {
            herald::dev::ensure_database(&pg.admin_url, "herald_dev").await?;
            pg.url_for("herald_dev")
        };
        settings.database.url = herald::config::Secret::new(url);
        Some(pg)
    } else {
        None
    };
    let mut settings = herald::dev::dev_settings(settings);
    // Migrated here, before the key is made; not again when the roles start.
    settings.database.migrate_on_start = false;
    let app = App::build(settings)?;
    store::migrate(&app.pool).await?;
    let (_, key) = {
        let mut conn = app.pool.acquire().await?;
        keys::create_key(&mut conn, "dev", &[keys::Scope::Send, keys::Scope::Read, keys::Scope::Admin]).await?
    };
    println!("{}", herald::dev::banner(&app.settings.server.listen, &key));
    app.run(Roles { api: true, worker: true }, app::shutdown_token()).await?;
    Ok(ExitCode::SUCCESS)
}
