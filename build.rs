//! Stamps the build with its git revision, when it is built from a git checkout (a container
//! build copies no `.git`: it is then the version alone). `herald --version` and `GET /version`
//! show it.

use std::process::Command;

fn main() {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    let full = if rev.is_empty() { version.to_owned() } else { format!("{version} ({rev})") };
    println!("cargo:rustc-env=HERALD_VERSION={full}");
    println!("cargo:rustc-env=HERALD_GIT_REV={rev}");
    // Rebuilt when HEAD moves (a commit, a checkout), not on every edit.
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
