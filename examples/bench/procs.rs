//! Child processes: the `herald` binary in its roles, the naive server, and the build that
//! keeps both current. A child is stopped with SIGTERM (SIGKILL if it does not exit in
//! time) when its handle is stopped or dropped, so none outlives the bench, on errors too.
//! Each child's stderr goes to a log file in the run's temporary folder; its tail is shown
//! when the child dies early.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Result;

/// The binaries the bench starts, built in the bench's own profile.
pub struct Binaries {
    pub herald: PathBuf,
    pub naive: PathBuf,
}

/// Build (when run under cargo) and locate `herald` and `naive_server` next to this example:
/// `target/<profile>/examples/bench` → `target/<profile>/herald`.
pub fn build() -> Result<Binaries> {
    let exe = std::env::current_exe()?;
    let examples = exe.parent().ok_or("cannot locate the bench binary's folder")?;
    let profile_dir = examples.parent().ok_or("cannot locate the target profile folder")?;
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).unwrap_or("release").to_owned();
    let bins = Binaries { herald: profile_dir.join("herald"), naive: examples.join("naive_server") };
    // `cargo run --example bench` builds only the example: build the two others (a no-op when
    // they are current), so that the figures are for the code in the working tree.
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("bench: cargo build ({profile} profile) --bin herald --example naive_server");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bin", "herald", "--example", "naive_server"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "release" => {
                cmd.arg("--release");
            }
            "debug" => {}
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("`cargo build --bin herald --example naive_server` failed ({status})").into());
        }
    }
    for bin in [&bins.herald, &bins.naive] {
        if !bin.is_file() {
            return Err(format!(
                "{} not found: run `cargo build --release --bin herald --example naive_server` first",
                bin.display()
            )
            .into());
        }
    }
    Ok(bins)
}

/// `herald` in the `dist` profile (what the Dockerfile and a Lambda zip ship), built when run
/// under cargo (a no-op when current; a fat-LTO build takes minutes the first time).
pub fn build_dist() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).ok_or("cannot locate the target folder")?;
    let bin = target.join("dist").join("herald");
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("bench:   cargo build --profile dist --bin herald");
        let status = Command::new(cargo)
            .args(["build", "--profile", "dist", "--bin", "herald"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("`cargo build --profile dist --bin herald` failed ({status})").into());
        }
    }
    if !bin.is_file() {
        return Err(format!("{} not found: run `cargo build --profile dist --bin herald` first", bin.display()).into());
    }
    Ok(bin)
}

/// A running child process; stopped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: String, mut cmd: Command, log: PathBuf, stdout: Stdio) -> Result<Proc> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", cmd.get_program().to_string_lossy()))?;
        Ok(Proc { name, child: Some(child), log })
    }

    /// `cmd` as a child named `name`, its stderr logged in `dir`.
    pub fn spawn_logged(name: &str, cmd: Command, dir: &Path) -> Result<Proc> {
        let file_name = name.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        Proc::spawn(name.to_owned(), cmd, log_path(dir, &file_name), Stdio::null())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// An error (with the end of the child's log) if the child has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { return Err(format!("{} was stopped", self.name).into()) };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("{} exited early ({status}); {}", self.name, log_tail(&self.log)).into()),
        }
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 20 s).
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        terminate(&child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                // Killed by the SIGTERM (the Lambda roles do not handle it, as a function
                // needs not), or 143 = 128 + SIGTERM through a shell.
                use std::os::unix::process::ExitStatusExt;
                return if status.success() || status.code() == Some(143) || status.signal() == Some(15) {
                    Ok(())
                } else {
                    Err(format!("{} exited with {status} on SIGTERM; {}", self.name, log_tail(&self.log)).into())
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not stop within 20 s of SIGTERM: killed", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        terminate(&child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM through `kill(1)`: no signal crate needed.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.is_empty() { format!("its log ({}) is empty", log.display()) } else { format!("last log lines:\n{tail}") }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Value of a `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].split_whitespace().next()?.parse().ok()
}

static NEXT_LOG: AtomicU32 = AtomicU32::new(0);

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{:02}-{name}.log", NEXT_LOG.fetch_add(1, Ordering::Relaxed)))
}

/// A child's environment: the inherited one minus anything that would change Herald's
/// defaults, and loopback never going through a proxy.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("HERALD") || k == "RUST_LOG" || k == "DATABASE_URL" || k.starts_with("AWS_LAMBDA") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
}

/// Herald on one database with one config file, started in any role.
#[derive(Clone)]
pub struct Herald {
    pub bin: PathBuf,
    pub db_url: String,
    pub config: PathBuf,
    pub logs: PathBuf,
}

/// A Herald process; `base` is its API origin (unused for `worker`).
pub struct Running {
    pub proc: Proc,
    pub base: String,
}

impl Herald {
    fn command(&self, args: &[&str], port: Option<u16>) -> Command {
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.env("DATABASE_URL", &self.db_url).env("HERALD__LOG__LEVEL", "warn");
        if let Some(port) = port {
            cmd.env("HERALD__SERVER__LISTEN", format!("127.0.0.1:{port}"));
        }
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `herald migrate`, then `herald keys create`: returns the API key (stdout's last line).
    pub async fn prepare(&self) -> Result<String> {
        self.run(&["migrate"]).await?;
        let out = self.run(&["keys", "create", "--tenant", "bench", "--scopes", "send,read,admin"]).await?;
        let key = out.lines().map(str::trim).rfind(|l| !l.is_empty()).ok_or("`herald keys create` printed no key")?;
        Ok(key.to_owned())
    }

    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::from(self.command(args, None));
        cmd.kill_on_drop(true).stdin(Stdio::null());
        let what = format!("herald {}", args.join(" "));
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .map_err(|_| format!("`{what}` did not finish within 60 s"))??;
        if !out.status.success() {
            return Err(
                format!("`{what}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()).into()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start `herald ROLE`; for roles with an API, wait for `GET /readyz` = 200.
    pub async fn start(&self, role: &str) -> Result<Running> {
        let port = free_port()?;
        let log = log_path(&self.logs, &format!("herald-{role}"));
        let mut proc = Proc::spawn(format!("herald {role}"), self.command(&[role], Some(port)), log, Stdio::null())?;
        let base = format!("http://127.0.0.1:{port}");
        if role != "worker" {
            wait_ready(&mut proc, &base).await?;
        }
        Ok(Running { proc, base })
    }
}

async fn wait_ready(proc: &mut Proc, base: &str) -> Result<()> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_alive()?;
        if let Ok(resp) = client.get(format!("{base}/readyz")).send().await
            && resp.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{base}/readyz did not answer 200 within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start the naive server on `db_url`; returns it and its origin (the address it prints).
pub async fn start_naive(bin: &Path, db_url: &str, logs: &Path) -> Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    clean_env(&mut cmd);
    cmd.env("DATABASE_URL", db_url).args(["--listen", "127.0.0.1:0"]);
    let mut proc = Proc::spawn("naive_server".into(), cmd, log_path(logs, "naive"), Stdio::piped())?;
    let stdout = proc.child.as_mut().and_then(|c| c.stdout.take()).ok_or("naive_server has no stdout")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(line)) if !line.trim().is_empty() => line,
        Ok(_) => {
            proc.check_alive()?;
            return Err("naive_server closed its stdout without printing its address".into());
        }
        Err(_) => return Err("naive_server printed no address within 30 s".into()),
    };
    Ok((proc, format!("http://{}", line.trim())))
}

/// CPU time (user + system, in clock ticks of 10 ms) used so far by the process `pid` and by
/// every process named `postgres` or `pgbouncer` on this machine: how the work of a scenario
/// splits between Herald and the database side.
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let ticks = |stat: &str| -> Option<(String, u64)> {
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split(' ').collect();
        Some((comm.to_owned(), fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?))
    };
    let mut database = 0;
    let mut own = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((comm, t)) = ticks(&stat) else { continue };
        if entry.file_name().to_str() == Some(&pid.to_string()) {
            own = t;
        } else if comm == "postgres" || comm == "pgbouncer" {
            database += t;
        }
    }
    (own, database)
}
