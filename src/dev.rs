//! `herald dev`: zero set-up. Finds a PostgreSQL (DATABASE_URL, else one on localhost:5432,
//! else a throwaway cluster started with the local `initdb`/`pg_ctl`), sends everything
//! through the `log` provider (`config/dev.toml`), and prints what the other commands and a
//! first request need: the DATABASE_URL, a dev API key that works (the same one on every start
//! against the same database), and the dev tenant's callback signing secret.
//! `local_postgres` is also what the test suite uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tracing::{info, warn};

use crate::app::{App, AppError, Roles};
use crate::config::{Secret, Settings};
use crate::domain::{ApiKeyId, Channel};
use crate::store::keys::{self, Scope};

pub const INSTALL_HINT: &str = "no PostgreSQL found: set DATABASE_URL, run one on localhost:5432, \
     or install PostgreSQL so that `initdb` and `pg_ctl` exist \
     (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
     macOS: `brew install postgresql@17`)";

/// A PostgreSQL to use, and the throwaway cluster behind it, if one was started.
pub struct LocalPostgres {
    /// A URL of the server's maintenance database (`postgres`), for creating databases.
    pub admin_url: String,
    cluster: Option<Cluster>,
}

impl LocalPostgres {
    /// The URL of `db` on the same server.
    pub fn url_for(&self, db: &str) -> String {
        replace_db(&self.admin_url, db)
    }

    pub fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
    }
}

fn replace_db(url: &str, db: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_path(&format!("/{db}"));
            u.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// Find a server on localhost:5432 we can log in to, or start a throwaway cluster.
pub async fn local_postgres(force_throwaway: bool) -> Result<LocalPostgres, AppError> {
    if !force_throwaway {
        let mut users: Vec<String> = Vec::new();
        if let Ok(u) = std::env::var("USER") {
            users.push(u);
        }
        users.extend(["postgres".to_owned(), "root".to_owned()]);
        for user in users {
            let url = format!("postgres://{user}@localhost:5432/postgres");
            let attempt = tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(&url)).await;
            if let Ok(Ok(conn)) = attempt {
                let _ = conn.close().await;
                return Ok(LocalPostgres { admin_url: url, cluster: None });
            }
        }
    }
    let cluster = Cluster::start()?;
    let admin_url = cluster.url();
    Ok(LocalPostgres { admin_url, cluster: Some(cluster) })
}

/// Create database `name` unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<(), AppError> {
    let mut conn = PgConnection::connect(admin_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is ours and quoted.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// A PostgreSQL cluster in a temporary folder, on a Unix socket only, removed on drop.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Cluster {
    fn start() -> Result<Cluster, AppError> {
        let bin = find_pg_bin().ok_or_else(|| AppError::LocalPostgres(INSTALL_HINT.into()))?;
        let dir = std::env::temp_dir().join(format!("herald-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: run the server as the `postgres` user, which owns
        // the folder.
        let as_postgres_user = is_root();
        if as_postgres_user {
            run_tool(Command::new("chown").arg("postgres:").arg(&dir), "chown")?;
        }
        let port = free_port()?;
        let cluster = Cluster { dir, bin, port, as_postgres_user };
        let data = cluster.dir.join("data");
        cluster.pg(
            "initdb",
            &["-D", path_str(&data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        )?;
        let opts = format!("-c listen_addresses='' -k {} -p {} -c fsync=off", path_str(&cluster.dir), port);
        let log = cluster.dir.join("server.log");
        cluster.pg("pg_ctl", &["-D", path_str(&data), "-l", path_str(&log), "-o", &opts, "-w", "start"])?;
        info!(dir = %cluster.dir.display(), "started a throwaway PostgreSQL");
        Ok(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@localhost/postgres?host={}&port={}", path_str(&self.dir), self.port)
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<(), AppError> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args);
        run_tool(&mut cmd, tool)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Err(e) = self.pg("pg_ctl", &["-D", path_str(&data), "-m", "immediate", "-w", "stop"]) {
            warn!(error = %e, "could not stop the throwaway PostgreSQL");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), AppError> {
    let out = cmd.output().map_err(|e| AppError::LocalPostgres(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AppError::LocalPostgres(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, AppError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `initdb` and `pg_ctl`: on PATH, or in the usual install folders (newest version first).
fn find_pg_bin() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(d) = std::env::split_paths(&path).find(|d| has_tools(d))
    {
        return Some(d);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    candidates.reverse();
    candidates.extend(["/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin"].map(PathBuf::from));
    candidates.into_iter().find(|d| has_tools(d))
}

/// Run `herald dev` with `settings` (from `Settings::load_dev`) until ctrl-c.
pub async fn run(mut settings: Settings, throwaway_db: bool) -> Result<(), AppError> {
    // Keep the throwaway cluster (if any) alive until we return: dropping it stops it.
    let (pg, source) = if settings.database.url.is_empty() || throwaway_db {
        let pg = local_postgres(throwaway_db).await?;
        let (url, source) = if pg.is_throwaway() {
            (pg.admin_url.clone(), DbSource::Throwaway)
        } else {
            ensure_database(&pg.admin_url, "herald_dev").await?;
            (pg.url_for("herald_dev"), DbSource::Local)
        };
        settings.database.url = Secret::new(url);
        (Some(pg), source)
    } else {
        (None, DbSource::Configured)
    };
    // Migrated here, before the key is made; not again when the roles start.
    settings.database.migrate_on_start = false;
    let app = App::build(settings)?;
    app.check_database().await?;
    app.migrate().await?;
    // Bound before anything is printed: a taken port is an error, not a banner and then one.
    let listener = app.bind().await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut conn = crate::store::session(&app.pool).await?;
    let shared = !app.settings.callbacks.signing_secret.is_empty();
    keys::create_tenant_for(&mut conn, DEV_TENANT, shared).await?;
    let secret = match keys::tenant_secret(&mut conn, DEV_TENANT).await? {
        Some(s) => Some(s),
        // A dev tenant from before per-tenant secrets: give it one.
        None if !shared => {
            let s = crate::domain::webhook::new_signing_secret();
            let changes = keys::TenantChanges { signing_secret: Some(&s), ..Default::default() };
            keys::set_tenant(&mut conn, DEV_TENANT, &changes).await?;
            Some(s)
        }
        None => None,
    };
    // A throwaway database is new on every start: there is no key worth keeping for it.
    let keep = if source == DbSource::Throwaway { None } else { key_file(app.settings.database.url.expose()) };
    let key = dev_key(&mut conn, keep.as_deref()).await?;
    conn.finish().await?;
    let database_url = redacted(app.settings.database.url.expose());
    let routes = Channel::ALL.map(|c| (c, app.settings.channels.get(c).providers.clone()));
    let ops_link = app.ops_link(DEV_TENANT, crate::domain::ops_link::MAX_MINUTES, &base).await?.unwrap_or_default();
    println!(
        "{}",
        banner(&Banner { base: &base, key: &key, database_url: &database_url, source, secret, routes, ops_link })
    );
    app.run_on(Some(listener), Roles { api: true, worker: true }, crate::app::shutdown_token()).await?;
    drop(pg);
    Ok(())
}

const DEV_TENANT: &str = "dev";

/// Where dev's database came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbSource {
    /// DATABASE_URL or database.url.
    Configured,
    /// The `herald_dev` database of a server on localhost:5432.
    Local,
    /// A cluster started for this run, removed on exit.
    Throwaway,
}

/// The dev key, reused across starts against the same database: it is kept in `keep` (only
/// its hash is in the database), and used again while it still authenticates. Otherwise a
/// new one is made, the one kept before (if any) revoked, and the new one kept.
async fn dev_key(conn: &mut PgConnection, keep: Option<&Path>) -> Result<String, AppError> {
    let kept = keep.and_then(|p| std::fs::read_to_string(p).ok());
    let kept: Option<(String, String)> =
        kept.as_deref().and_then(|s| s.trim().split_once('\n')).map(|(id, key)| (id.trim().into(), key.trim().into()));
    if let Some((_, key)) = &kept
        && keys::authenticate(conn, key).await?.is_some()
    {
        return Ok(key.clone());
    }
    if let Some(id) = kept.as_ref().and_then(|(id, _)| id.parse::<ApiKeyId>().ok()) {
        keys::revoke_key(conn, id).await?;
    }
    let (id, key) = keys::create_key(conn, DEV_TENANT, &[Scope::Send, Scope::Read, Scope::Admin]).await?;
    if let Some(path) = keep
        && let Err(e) = write_private(path, &format!("{id}\n{key}\n"))
    {
        warn!(path = %path.display(), error = %e, "could not keep the dev key; the next start makes another");
    }
    Ok(key)
}

/// `$XDG_DATA_HOME/herald` (else `~/.local/share/herald`): one file per database, named by a
/// hash of its URL, holding the dev key for it.
fn key_file(database_url: &str) -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    let digest = crate::store::keys::hash_key(database_url);
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Some(data.join("herald").join(format!("dev-key-{name}")))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(path)?, content.as_bytes())
}

/// `url` with its password, if any, replaced by `***`.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// What the banner shows.
pub struct Banner<'a> {
    /// `http://127.0.0.1:8080`, the address really bound.
    pub base: &'a str,
    pub key: &'a str,
    pub database_url: &'a str,
    pub source: DbSource,
    /// The dev tenant's callback signing secret (`None`: the shared `callbacks.signing_secret`).
    pub secret: Option<String>,
    /// Each channel's providers, in failover order.
    pub routes: [(Channel, Vec<String>); 3],
    /// A sign-in link to the dashboard for the dev tenant (`herald ops-link`).
    pub ops_link: String,
}

/// The banner `herald dev` prints once it listens: where everything is, a key, and requests to
/// paste, one per channel.
pub fn banner(b: &Banner<'_>) -> String {
    let Banner { base, key, database_url, .. } = b;
    let db = match b.source {
        DbSource::Configured => format!("  DATABASE_URL={database_url}   (from your configuration)"),
        DbSource::Local => format!("  export DATABASE_URL='{database_url}'"),
        DbSource::Throwaway => format!(
            "  export DATABASE_URL='{database_url}'\n  (a throwaway PostgreSQL started for this run: its data is lost when dev stops)"
        ),
    };
    let routes: Vec<String> = b
        .routes
        .iter()
        .map(|(c, p)| format!("  {:<5} -> {}", c.as_str(), if p.is_empty() { "(none)".into() } else { p.join(", ") }))
        .collect();
    let secret = match &b.secret {
        Some(s) => format!("  {s}   (tenant `dev`; verify callbacks with it)"),
        None => "  callbacks.signing_secret (shared by tenants without their own)".to_owned(),
    };
    let auth = format!("-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json'");
    let kept = if b.source == DbSource::Throwaway {
        "a new one on every start: the database is new"
    } else {
        "the same on every start"
    };
    format!(
        "Herald dev is running on {base} (ctrl-c stops it).\n\
         \n\
         Providers by channel (`log` writes each message to this terminal and reports it sent):\n{routes}\n\
         \n\
         For the other commands (herald keys create, keys list, tenants set, …):\n{db}\n\
         \n\
         Dev API key (tenant `dev`, scopes send,read,admin; {kept}):\n  {key}\n\
         \n\
         Status callback signing secret:\n{secret}\n\
         \n\
         Send an email, an SMS, a push notification:\n  \
         curl -s -X POST {base}/v1/notifications {auth} \\\n    \
         -d '{{\"channel\": \"email\", \"to\": \"alice@example.com\", \"content\": {{\"subject\": \"Hello\", \"text\": \"Hi from Herald\"}}}}'\n  \
         curl -s -X POST {base}/v1/notifications {auth} \\\n    \
         -d '{{\"channel\": \"sms\", \"to\": \"+14155550100\", \"content\": {{\"text\": \"Your code is 123456\"}}}}'\n  \
         curl -s -X POST {base}/v1/notifications {auth} \\\n    \
         -d '{{\"channel\": \"push\", \"to\": {{\"fcm\": \"device-token\"}}, \"content\": {{\"title\": \"Hello\", \"body\": \"Hi from Herald\", \"data\": {{\"screen\": \"inbox\"}}}}}}'\n\
         \n\
         Then see what happened to one (the id is in the answer):\n  \
         curl -s {base}/v1/notifications/ID -H 'Authorization: Bearer {key}'\n\
         \n\
         The dashboard, {base}/ops: open this link (it signs you in with the dev tenant's read scope;\n\
         it works once, for 15 minutes: `herald ops-link --tenant dev` makes another):\n  {ops_link}\n\
         The API's documentation: {base}/docs (the OpenAPI document: {base}/openapi.json)\n",
        ops_link = b.ops_link,
        routes = routes.join("\n"),
    )
}
