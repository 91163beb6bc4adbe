//! Attacks on the daemon's partial reload: a watcher event re-reads only the manifests it
//! concerns (`stale_manifests`, `manifest::Cache`), lists whose policies did not change keep
//! their desired set, and a list that only gained contacts is not read for forgetting.
//!
//! After each change the question is the same: once the daemon settles, does it send
//! anything the manifests on disk no longer name, miss what they name, or look green when
//! it should not? Each test is named after the behaviour the manifests on disk demand.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use support::daemon::{Harness, L1, L2, Opts};
use support::{HEADER, Policy, emails, policy, write_atomic};

const CONVERGE: Duration = Duration::from_secs(15);

fn lines(contacts: &[String]) -> String {
    contacts.join("\n") + "\n"
}

/// Replaces the symlink `link` with one to `target`, atomically (a temporary link renamed
/// over it, as `ln -sfn` and git-sync do).
fn swap_link(link: &Path, target: &str) {
    let tmp = link.with_file_name(".swap-link.tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// `sed -i`: a temporary file beside the target, renamed over it.
fn sed_i(path: &Path, text: &str) {
    let tmp = path.with_file_name("sedAb12Cd");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn assert_assert_opts() -> Opts {
    Opts {
        extra: vec!["--strategy".into(), "assert".into()],
        ..Opts::default()
    }
}

/// a (L1) reads `a.txt`, a symlink to `v1.txt`; b (L2) reads `v2.txt`. Both converged.
fn two_manifests_one_through_a_symlink(opts: Opts) -> (Harness, Vec<String>, Vec<String>) {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 3);
    let y = emails("y", 3);
    h.fake().add_contacts(L1, &x);
    h.fake().add_contacts(L1, &y);
    h.fake().add_contacts(L2, &y);
    std::fs::write(m.join("v1.txt"), lines(&x)).unwrap();
    std::fs::write(m.join("v2.txt"), lines(&y)).unwrap();
    symlink("v1.txt", m.join("a.txt")).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("a.txt").yaml());
    h.write("b.yaml", &Policy::new("b", L2).file("v2.txt").yaml());
    h.start_with(opts);
    h.wait_removed(L1, &x, CONVERGE);
    h.wait_removed(L2, &y, CONVERGE);
    h.wait_reason("a", "Converged", CONVERGE);
    h.wait_reason("b", "Converged", CONVERGE);
    (h, x, y)
}

// ---- findings: the partial reload keeps a stale part ------------------------------------------

/// The symlink a policy reads is pointed at a file another manifest reads: the watcher's path
/// resolves (at reload time) to that other file, whose readers are only the other manifest,
/// so `a.yaml` is not read again and keeps asserting `v1.txt`.
#[test]
fn a_data_symlink_repointed_at_a_file_another_manifest_reads_is_followed() {
    let (h, _x, y) = two_manifests_one_through_a_symlink(Opts::default());
    swap_link(&h.manifests().join("a.txt"), "v2.txt");
    // a now names y on L1.
    h.wait_removed(L1, &y, CONVERGE);
}

/// Same change, seen from invariant 1: with resyncs due every second, the contacts a no
/// longer names (x, from `v1.txt`) must not be sent again once the daemon has settled.
#[test]
fn a_data_symlink_repointed_at_a_file_another_manifest_reads_stops_the_old_contacts() {
    let mut opts = assert_assert_opts();
    opts.extra
        .extend(["--resync-after", "1s", "--interval", "1s"].map(String::from));
    let (h, x, _y) = two_manifests_one_through_a_symlink(opts);
    swap_link(&h.manifests().join("a.txt"), "v2.txt");
    // Settle: debounce, reload, a pass.
    std::thread::sleep(Duration::from_secs(2));
    let from = h.batch_count();
    std::thread::sleep(Duration::from_secs(4));
    let sent = h.sent_since(L1, from);
    let stale: Vec<&String> = x.iter().filter(|c| sent.contains(*c)).collect();
    assert!(
        stale.is_empty(),
        "contacts no manifest names were sent to L1 after the daemon settled: {stale:?}\n{}",
        h.log_text()
    );
}

/// The symlinked data file a policy reads is deleted: the policy's file source is missing,
/// so it is invalid and /status is not ready. The removed link resolves to nothing that any
/// reader is keyed by (readers hold the link's *target*), and the change is skipped as a
/// vanished temporary file.
#[test]
fn deleting_a_symlinked_data_file_makes_its_policy_invalid() {
    let (h, _x, _y) = two_manifests_one_through_a_symlink(Opts::default());
    std::fs::remove_file(h.manifests().join("a.txt")).unwrap();
    let (ready, _, message) = h.wait_reason("a", "ManifestInvalid", CONVERGE);
    assert_eq!(ready, "False", "{message}");
    h.wait("/status to say not ready", CONVERGE, || {
        (h.status()["ready"] == false).then_some(())
    });
}

/// Same through a directory symlink: `cur -> v1/`, the policy reads `cur/list.txt`; `cur` is
/// removed.
#[test]
fn removing_a_directory_symlink_a_policy_reads_through_makes_it_invalid() {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 3);
    h.fake().add_contacts(L1, &x);
    std::fs::create_dir_all(m.join("v1")).unwrap();
    std::fs::write(m.join("v1/list.txt"), lines(&x)).unwrap();
    symlink("v1", m.join("cur")).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("cur/list.txt").yaml());
    h.start();
    h.wait_removed(L1, &x, CONVERGE);
    h.wait_reason("a", "Converged", CONVERGE);
    std::fs::remove_file(m.join("cur")).unwrap();
    h.wait_reason("a", "ManifestInvalid", CONVERGE);
}

/// One CSV, two policies reading different columns of it: a's column has a bad address (a is
/// invalid), b's is fine (b is valid, so the CSV has a valid reader). Fixing the address must
/// make a valid again; only b's manifest is read again, a stays invalid on a stale cache.
#[test]
fn fixing_a_csv_an_invalid_policy_reads_revalidates_it_though_a_valid_policy_reads_it_too() {
    let mut h = Harness::new();
    let m = h.manifests();
    let good = emails("g", 2);
    let ids = h.fake().add_contacts(L2, emails("i", 2));
    h.fake().add_contacts(L1, &good);
    let csv = |first: &str| {
        format!(
            "email,contactId\n{first},{}\n{},{}\n",
            ids[0], good[1], ids[1]
        )
    };
    std::fs::write(m.join("x.csv"), csv("not-an-address")).unwrap();
    h.write(
        "a.yaml",
        &format!(
            "{HEADER}metadata: {{name: a}}\nspec:\n  contactListId: {L1}\n  exclude:\n    files:\n      - path: x.csv\n        column: email\n"
        ),
    );
    h.write(
        "b.yaml",
        &format!(
            "{HEADER}metadata: {{name: b}}\nspec:\n  contactListId: {L2}\n  exclude:\n    files:\n      - path: x.csv\n        column: contactId\n        type: contactId\n"
        ),
    );
    h.start();
    h.wait_reason("a", "ManifestInvalid", CONVERGE);
    h.wait_reason("b", "Converged", CONVERGE);
    sed_i(&m.join("x.csv"), &csv(&good[0]));
    h.wait_reason("a", "Converged", CONVERGE);
    h.wait_removed(L1, &good, CONVERGE);
}

/// The realistic order of the same: a CRM export read by two policies (emails for one list,
/// contact ids for another) gets a bad row (one policy goes invalid), and the next export is
/// fixed and names a new unsubscribe. Both policies must come back, and the new address must
/// be removed.
#[test]
fn a_shared_csv_broken_then_fixed_brings_both_policies_back() {
    let mut h = Harness::new();
    let m = h.manifests();
    let e = emails("e", 3);
    let ids = h.fake().add_contacts(L2, emails("i", 3));
    h.fake().add_contacts(L1, &e);
    let csv = |rows: &[(&str, &str)]| {
        let mut s = String::from("email,contactId\n");
        for (a, b) in rows {
            s.push_str(&format!("{a},{b}\n"));
        }
        s
    };
    std::fs::write(m.join("crm.csv"), csv(&[(&e[0], &ids[0])])).unwrap();
    h.write(
        "a.yaml",
        &format!(
            "{HEADER}metadata: {{name: a}}\nspec:\n  contactListId: {L1}\n  exclude:\n    files:\n      - path: crm.csv\n        column: email\n"
        ),
    );
    h.write(
        "b.yaml",
        &format!(
            "{HEADER}metadata: {{name: b}}\nspec:\n  contactListId: {L2}\n  exclude:\n    files:\n      - path: crm.csv\n        column: contactId\n        type: contactId\n"
        ),
    );
    h.start();
    h.wait_removed(L1, &e[..1], CONVERGE);
    h.wait_reason("a", "Converged", CONVERGE);
    // A bad export: a goes invalid, b goes on.
    write_atomic(
        &m.join("crm.csv"),
        &csv(&[(&e[0], &ids[0]), ("n/a", &ids[1])]),
    );
    h.wait_reason("a", "ManifestInvalid", CONVERGE);
    h.wait_reason("b", "Converged", CONVERGE);
    // The next export is fixed and names e[2].
    write_atomic(
        &m.join("crm.csv"),
        &csv(&[(&e[0], &ids[0]), (&e[1], &ids[1]), (&e[2], &ids[2])]),
    );
    h.wait_removed(L2, &ids, CONVERGE);
    h.wait_removed(L1, &e, CONVERGE);
    h.wait_reason("a", "Converged", CONVERGE);
}

/// Two names of one file (a hard link: `b.txt` is `a.txt`), each read by its own manifest; an
/// in-place edit through `a.txt` changes what `b.txt` says, but the watcher names only
/// `a.txt`, and only `a.yaml` is read again.
#[test]
fn an_in_place_edit_through_one_hard_link_updates_the_policy_reading_the_other() {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 2);
    let y = emails("y", 2);
    for l in [L1, L2] {
        h.fake().add_contacts(l, &x);
        h.fake().add_contacts(l, &y);
    }
    std::fs::write(m.join("a.txt"), lines(&x)).unwrap();
    std::fs::hard_link(m.join("a.txt"), m.join("b.txt")).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("a.txt").yaml());
    h.write("b.yaml", &Policy::new("b", L2).file("b.txt").yaml());
    h.start();
    h.wait_removed(L1, &x, CONVERGE);
    h.wait_removed(L2, &x, CONVERGE);
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("a.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, lines(&y).as_bytes()))
        .unwrap();
    h.wait_removed(L1, &y, CONVERGE);
    h.wait_removed(L2, &y, CONVERGE);
}

// ---- regressions: what held -------------------------------------------------------------------

/// `sed -i` on a data file two manifests (on two lists) read: both are read again; what the
/// file dropped is not sent again, what it gained is removed from both lists.
#[test]
fn sed_i_on_a_data_file_two_manifests_share_updates_both_lists() {
    let mut opts = assert_assert_opts();
    opts.extra
        .extend(["--resync-after", "1s", "--interval", "1s"].map(String::from));
    let mut h = Harness::new();
    let m = h.manifests();
    let old = emails("o", 3);
    let new = emails("n", 3);
    for l in [L1, L2] {
        h.fake().add_contacts(l, &old);
        h.fake().add_contacts(l, &new);
    }
    std::fs::write(m.join("shared.txt"), lines(&old)).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("shared.txt").yaml());
    h.write("b.yaml", &Policy::new("b", L2).file("shared.txt").yaml());
    h.start_with(opts);
    h.wait_removed(L1, &old, CONVERGE);
    h.wait_removed(L2, &old, CONVERGE);
    sed_i(&m.join("shared.txt"), &lines(&new));
    h.wait_removed(L1, &new, CONVERGE);
    h.wait_removed(L2, &new, CONVERGE);
    std::thread::sleep(Duration::from_secs(1));
    let from = h.batch_count();
    std::thread::sleep(Duration::from_secs(3));
    for l in [L1, L2] {
        let sent = h.sent_since(l, from);
        assert!(
            old.iter().all(|c| !sent.contains(c)),
            "dropped contacts re-sent to {l}: {sent:?}"
        );
    }
}

/// A manifest switches (editor atomic save) to a data file another manifest already reads;
/// later edits of its old file concern it no more, edits of the new one do.
#[test]
fn a_manifest_switching_to_a_shared_data_file_follows_the_new_one() {
    let mut h = Harness::new();
    let m = h.manifests();
    let p = emails("p", 2);
    let q = emails("q", 2);
    let r = emails("r", 2);
    for c in [&p, &q, &r] {
        h.fake().add_contacts(L1, c);
        h.fake().add_contacts(L2, c);
    }
    std::fs::write(m.join("own.txt"), lines(&p)).unwrap();
    std::fs::write(m.join("shared.txt"), lines(&q)).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("own.txt").yaml());
    h.write("b.yaml", &Policy::new("b", L2).file("shared.txt").yaml());
    h.start();
    h.wait_removed(L1, &p, CONVERGE);
    h.wait_removed(L2, &q, CONVERGE);
    h.write("a.yaml", &Policy::new("a", L1).file("shared.txt").yaml());
    h.wait_removed(L1, &q, CONVERGE);
    // The shared file gains r: both lists must follow.
    write_atomic(
        &m.join("shared.txt"),
        &lines(&[q.clone(), r.clone()].concat()),
    );
    h.wait_removed(L1, &r, CONVERGE);
    h.wait_removed(L2, &r, CONVERGE);
    // The old file is no longer a's: editing it sends nothing to L1.
    let from = h.batch_count();
    let s = emails("s", 2);
    h.fake().add_contacts(L1, &s);
    write_atomic(&m.join("own.txt"), &lines(&s));
    std::thread::sleep(Duration::from_secs(2));
    assert!(h.sent_since(L1, from).is_empty(), "{}", h.log_text());
    assert!(s.iter().all(|c| h.fake().is_member(L1, c)));
}

/// A data file an invalid policy is waiting for (missing at start) appears, then is moved
/// away again: the policy becomes valid and converges, then invalid again.
#[test]
fn a_missing_data_file_that_appears_then_moves_away_is_followed() {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 2);
    h.fake().add_contacts(L1, &x);
    h.write("a.yaml", &Policy::new("a", L1).file("later/x.txt").yaml());
    h.write("b.yaml", &policy("b", L2, &emails("b", 1)));
    h.start();
    h.wait_reason("a", "ManifestInvalid", CONVERGE);
    write_atomic(&m.join("later/x.txt"), &lines(&x));
    h.wait_removed(L1, &x, CONVERGE);
    h.wait_reason("a", "Converged", CONVERGE);
    std::fs::rename(m.join("later"), h.dir.path().join("elsewhere")).unwrap();
    h.wait_reason("a", "ManifestInvalid", CONVERGE);
}

/// The directory holding a data file is swapped for a new one (`mv data data.old; mv
/// data.new data`), then the new file is edited in place: the watcher must still name the
/// new directory's paths correctly.
#[test]
fn a_swapped_data_directory_is_followed_by_later_in_place_edits() {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 2);
    let y = emails("y", 2);
    let z = emails("z", 2);
    for c in [&x, &y, &z] {
        h.fake().add_contacts(L1, c);
    }
    std::fs::create_dir_all(m.join("data")).unwrap();
    std::fs::write(m.join("data/list.txt"), lines(&x)).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("data/list.txt").yaml());
    h.start();
    h.wait_removed(L1, &x, CONVERGE);
    std::fs::create_dir_all(m.join("data.new")).unwrap();
    std::fs::write(m.join("data.new/list.txt"), lines(&y)).unwrap();
    std::fs::rename(m.join("data"), m.join("data.old")).unwrap();
    std::fs::rename(m.join("data.new"), m.join("data")).unwrap();
    h.wait_removed(L1, &y, CONVERGE);
    std::thread::sleep(Duration::from_millis(500));
    // In place, no rename: only an inotify modify of data/list.txt.
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("data/list.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, lines(&z).as_bytes()))
        .unwrap();
    h.wait_removed(L1, &z, CONVERGE);
}

/// A policy moved to another list, and renamed, by editing its manifest: the new list gets
/// its contacts, the old list is sent nothing more.
#[test]
fn a_policy_moved_to_another_list_and_renamed_stops_on_the_old_list() {
    let mut opts = assert_assert_opts();
    opts.extra
        .extend(["--resync-after", "1s", "--interval", "1s"].map(String::from));
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 3);
    h.fake().add_contacts(L1, &x);
    h.fake().add_contacts(L2, &x);
    std::fs::write(m.join("x.txt"), lines(&x)).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("x.txt").yaml());
    h.write("other.yaml", &policy("other", L1, &emails("o", 1)));
    h.start_with(opts);
    h.wait_removed(L1, &x, CONVERGE);
    h.write("a.yaml", &Policy::new("a2", L2).file("x.txt").yaml());
    h.wait_removed(L2, &x, CONVERGE);
    h.wait_reason("a2", "Converged", CONVERGE);
    std::thread::sleep(Duration::from_secs(1));
    let from = h.batch_count();
    std::thread::sleep(Duration::from_secs(3));
    let sent = h.sent_since(L1, from);
    assert!(
        x.iter().all(|c| !sent.contains(c)),
        "the moved policy's contacts were re-sent to its old list: {sent:?}"
    );
}

/// A new manifest reuses the name of a cached policy: both are invalid, nothing of either is
/// sent; renaming the new one lets both converge.
#[test]
fn a_name_duplicated_across_a_cached_and_a_new_manifest_stops_both_until_fixed() {
    let mut h = Harness::new();
    let a = emails("a", 2);
    let c = emails("c", 2);
    h.fake().add_contacts(L1, &a);
    h.fake().add_contacts(L2, &c);
    h.write("a.yaml", &policy("same", L1, &a[..1]));
    h.start();
    h.wait_removed(L1, &a[..1], CONVERGE);
    // a.yaml gains a[1] in the same burst as c.yaml duplicates the name.
    h.write("a.yaml", &policy("same", L1, &a));
    h.write("c.yaml", &policy("same", L2, &c));
    h.wait_reason("same", "ManifestInvalid", CONVERGE);
    std::thread::sleep(Duration::from_secs(1));
    assert!(h.fake().is_member(L1, &a[1]), "{}", h.log_text());
    assert!(c.iter().all(|x| h.fake().is_member(L2, x)));
    assert!(h.status()["ready"] == false);
    h.write("c.yaml", &policy("other", L2, &c));
    h.wait_removed(L2, &c, CONVERGE);
    h.wait_removed(L1, &a, CONVERGE);
    h.wait_reason("same", "Converged", CONVERGE);
}

/// A manifest symlink into a hidden directory (not walked) is re-pointed: the new target's
/// policy is loaded, not the cached one.
#[test]
fn a_manifest_symlink_into_a_hidden_directory_repointed_is_followed() {
    let mut h = Harness::new();
    let m = h.manifests();
    let x = emails("x", 2);
    let y = emails("y", 2);
    h.fake().add_contacts(L1, &x);
    h.fake().add_contacts(L1, &y);
    std::fs::create_dir_all(m.join(".v")).unwrap();
    std::fs::write(m.join(".v/1.yaml"), policy("p", L1, &x)).unwrap();
    std::fs::write(m.join(".v/2.yaml"), policy("p", L1, &y)).unwrap();
    symlink(".v/1.yaml", m.join("p.yaml")).unwrap();
    h.start();
    h.wait_removed(L1, &x, CONVERGE);
    swap_link(&m.join("p.yaml"), ".v/2.yaml");
    h.wait_removed(L1, &y, CONVERGE);
    // And an in-place edit of the (hidden) target.
    let z = emails("z", 2);
    h.fake().add_contacts(L1, &z);
    std::fs::write(m.join(".v/2.yaml"), policy("p", L1, &z)).unwrap();
    h.wait_removed(L1, &z, CONVERGE);
}

/// A burst of edits of one data file (a slow writer, or a loop of saves): after it, the last
/// content is what is asserted, and what only intermediate contents named is not sent later.
#[test]
fn a_burst_of_edits_settles_on_the_last_content() {
    let mut opts = assert_assert_opts();
    opts.extra
        .extend(["--resync-after", "1s", "--interval", "1s"].map(String::from));
    let mut h = Harness::new();
    let m = h.manifests();
    let all = emails("e", 40);
    h.fake().add_contacts(L1, &all);
    std::fs::write(m.join("d.txt"), lines(&all[..1])).unwrap();
    h.write("a.yaml", &Policy::new("a", L1).file("d.txt").yaml());
    h.start_with(opts);
    h.wait_removed(L1, &all[..1], CONVERGE);
    for i in 1..40 {
        if i % 2 == 0 {
            write_atomic(&m.join("d.txt"), &lines(&all[i..i + 1]));
        } else {
            std::fs::write(m.join("d.txt"), lines(&all[i..i + 1])).unwrap();
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    h.wait_removed(L1, &all[39..], CONVERGE);
    std::thread::sleep(Duration::from_secs(1));
    let from = h.batch_count();
    std::thread::sleep(Duration::from_secs(3));
    let sent = h.sent_since(L1, from);
    assert!(
        sent.iter().all(|c| *c == all[39]),
        "contacts only earlier contents named were sent after the burst: {sent:?}"
    );
}
