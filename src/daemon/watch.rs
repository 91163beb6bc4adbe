//! Watching the manifests: notify with a debouncer, reduced to "something changed".
//!
//! Editors write temporary files and rename them, git checkouts touch many files at once:
//! the debouncer folds a burst into one notification, and the scheduler reloads everything
//! and reconciles only the lists whose desired state changed. Which files changed is used
//! for one thing only: holding the sends of the lists those files concern until the reload
//! is done (see `crate::gate`); what to do is always decided from a full reload
//! (level-triggered).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Keeps the watch alive; dropping it stops watching.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    path: PathBuf,
    root: PathBuf,
}

impl Watch {
    /// True when the watched path now resolves to another directory: a symlink on it was
    /// swapped (git-sync's `--link`), and the watch, which follows inodes, is still on the
    /// old target. The caller sets up a new watch.
    pub fn moved(&self) -> bool {
        self.path.canonicalize().is_ok_and(|r| r != self.root)
    }
}

/// What a debounced burst of events says changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// These paths (as notify reports them: absolute, not canonical).
    Paths(Vec<PathBuf>),
    /// Something, but the watcher cannot say what (it reported an error).
    Unknown,
}

/// Watches `path` recursively; each debounced burst of relevant changes sends one
/// [`Changed`].
pub fn watch(
    path: &Path,
    debounce: Duration,
    tx: mpsc::UnboundedSender<Changed>,
) -> notify::Result<Watch> {
    let root = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    // notify reports paths under the path as given (made absolute), not the canonical one.
    let given = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Symlinks on the way (git-sync's `--link`): their directories are watched too, so that
    // swapping a link to a new checkout is a change.
    let links: Vec<PathBuf> = given
        .ancestors()
        .filter(|a| {
            a.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        })
        .map(Path::to_path_buf)
        .collect();
    let links_watched = links.clone();
    let watched_root = root.clone();
    let mut debouncer =
        new_debouncer(
            debounce,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) if events.iter().any(|e| e.need_rescan()) => {
                    // The kernel's queue overflowed (or the backend lost track): changes went
                    // unnamed, so every file may have changed.
                    tracing::warn!("file watcher lost events; reloading everything");
                    let _ = tx.send(Changed::Unknown);
                }
                Ok(events) => {
                    let relevant: Vec<PathBuf> = events
                        .iter()
                        .filter(|e| !e.kind.is_access())
                        .flat_map(|e| e.paths.iter())
                        .filter(|p| {
                            let rel = p
                                .strip_prefix(&root)
                                .or_else(|_| p.strip_prefix(&given))
                                .unwrap_or(p);
                            links.contains(p) || !is_noise(rel)
                        })
                        .cloned()
                        .collect();
                    if !relevant.is_empty() {
                        let _ = tx.send(Changed::Paths(relevant));
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "file watcher error");
                    }
                    let _ = tx.send(Changed::Unknown);
                }
            },
        )?;
    debouncer.watch(path, RecursiveMode::Recursive)?;
    for link in &links_watched {
        if let Some(parent) = link.parent() {
            debouncer.watch(parent, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(Watch {
        _debouncer: debouncer,
        path: path.to_path_buf(),
        root: watched_root,
    })
}

/// Changes that cannot affect the manifests: a version control system's internals and editor
/// swap or backup files. `p` is relative to the watched root.
///
/// Nothing else is noise, hidden paths included: file sources may live under a hidden
/// directory, and Kubernetes mounts a ConfigMap as symlinks into `..data`, swapped atomically
/// by renaming hidden links. Ignoring those once let an edit go unseen while the old plan kept
/// sending. A hidden temporary file an editor renames into place costs at most one more
/// (debounced) reload.
fn is_noise(p: &Path) -> bool {
    let vcs = p.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some(".git" | ".hg" | ".svn" | ".jj")
        )
    });
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let editor = name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name.starts_with(".#")
        || name == "4913";
    vcs || editor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_internals_and_swap_files_are_noise() {
        assert!(is_noise(Path::new(".git/index")));
        assert!(is_noise(Path::new("sub/.git/refs/heads/main")));
        assert!(is_noise(Path::new(".policy.yaml.swp")));
        assert!(is_noise(Path::new("policy.yaml~")));
        assert!(!is_noise(Path::new("policy.yaml")));
        assert!(!is_noise(Path::new("data/list.txt")));
    }

    #[test]
    fn hidden_sources_and_configmap_swaps_are_changes() {
        assert!(!is_noise(Path::new(".data/list.txt")));
        assert!(!is_noise(Path::new("..data")));
        assert!(!is_noise(Path::new("..data_tmp")));
        assert!(!is_noise(Path::new("..2026_11_27_21_00_00.123/p.yaml")));
    }
}
