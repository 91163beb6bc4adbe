//! Which revision of the manifests is applied: the git commit when the manifests live in a
//! git work tree (Flux's `lastAppliedRevision`), otherwise the policies' own digests.

use std::path::Path;
use std::process::Command;

/// `HEAD`'s commit of the work tree holding `path`, or `None` (no git, not a work tree).
pub fn git_commit(path: &Path) -> Option<String> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("git:{commit}"))
}
