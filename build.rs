//! Stamps the build with its git revision, when it is built from a git checkout (a container
//! build copies no `.git`: it is then the version alone). `herald --version` and `GET /version`
//! show it.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned()).filter(|s| !s.is_empty())
}

fn main() {
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    let full = if rev.is_empty() { version.to_owned() } else { format!("{version} ({rev})") };
    println!("cargo:rustc-env=HERALD_VERSION={full}");
    println!("cargo:rustc-env=HERALD_GIT_REV={rev}");
    // Rebuilt when HEAD moves (a commit, a checkout), not on every edit. The git folder is
    // asked of git, so that worktrees (where `.git` is a file) are covered; outside a checkout
    // only this script's own changes rebuild it.
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let p = Path::new(&dir).join(path);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
