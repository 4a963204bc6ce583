//! `herald dev`: zero set-up. Finds a PostgreSQL (DATABASE_URL, else one on localhost:5432,
//! else a throwaway cluster started with the local `initdb`/`pg_ctl`), and sends everything
//! through the `log` provider. `local_postgres` is also what the test suite uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tracing::{info, warn};

use crate::app::AppError;
use crate::config::{ProviderKind, ProviderSettings, Settings};
use crate::domain::Channel;

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
        let bin = find_pg_bin().ok_or_else(|| AppError::Other(INSTALL_HINT.into()))?;
        let dir = std::env::temp_dir().join(format!("herald-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: run the server as the `postgres` user, which owns
        // the folder.
        let as_postgres_user = is_root();
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:").arg(&dir), "chown")?;
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
        run(&mut cmd, tool)
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

fn run(cmd: &mut Command, what: &str) -> Result<(), AppError> {
    let out = cmd.output().map_err(|e| AppError::Other(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AppError::Other(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
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

/// Route every channel without providers to a `log` provider, and keep the API on loopback.
pub fn dev_settings(mut settings: Settings) -> Settings {
    const LOG: &str = "log";
    settings.providers.entry(LOG.into()).or_insert_with(|| ProviderSettings::new(ProviderKind::Log));
    for channel in Channel::ALL {
        let ch = settings.channels.get_mut(channel);
        if ch.providers.is_empty() {
            ch.providers.push(LOG.into());
        }
    }
    if settings.server.listen == "0.0.0.0:8080" {
        settings.server.listen = "127.0.0.1:8080".into();
    }
    settings
}

/// The banner `herald dev` prints once ready: the key and a request to paste.
pub fn banner(listen: &str, key: &str) -> String {
    let base = format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1"));
    format!(
        "Herald dev is running on {base} (ctrl-c stops it). Every send goes to the `log` provider: watch this terminal.\n\
         \n\
         Dev API key (tenant `dev`, scopes send,read,admin):\n  {key}\n\
         \n\
         Send a notification:\n  \
         curl -s -X POST {base}/v1/notifications -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"channel\": \"email\", \"to\": \"alice@example.com\", \"content\": {{\"subject\": \"Hello\", \"text\": \"Hi from Herald\"}}}}'\n\
         \n\
         Then see what happened to it (use the id from the answer):\n  \
         curl -s {base}/v1/notifications/ID -H 'Authorization: Bearer {key}'\n"
    )
}
