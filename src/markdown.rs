//! A plan as a pull request comment (`plan --output markdown`).
//!
//! Written for a public page: counts by default, contact addresses only when asked
//! (`--verbose`), and the email addresses a diagnostic quotes masked otherwise. A hidden
//! marker lets a bot find and update its one comment instead of adding one per push. The
//! comment stays under GitHub's 65,536-character limit: whole blocks are dropped from the end
//! and a note says so, so a table or a `<details>` is never cut in half.

use std::fmt::Write as _;

use crate::human::{duration, plural, policies, thousands};
use crate::manifest::Manifests;
use crate::plan::{ListPlan, Plan};
use crate::render::{list_requests, plan_requests, reason_and_policies};

/// The first line of every comment: a bot updates the comment that holds it.
pub const MARKER: &str = "<!-- listwarden-plan -->";

/// GitHub refuses a comment body longer than this many characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// Room kept for the truncation note.
const NOTE_ROOM: usize = 400;

/// Contacts listed per list with `--verbose`; more are counted, not listed.
const CONTACTS_PER_LIST: usize = 1_000;

/// Lists above this many go into a collapsed table when they have nothing to do.
const QUIET_LISTS_INLINE: usize = 5;

/// Escapes text for a Markdown paragraph or table cell: no HTML, no emphasis, no link, no
/// cell break, one line.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The comment: a block is a piece that is kept whole or dropped whole.
pub fn plan_markdown(manifests: &Manifests, plan: &Plan, verbose: bool) -> String {
    let blocks = blocks(manifests, plan, verbose);
    assemble(&blocks, GITHUB_COMMENT_LIMIT)
}

/// Joins `blocks` while they fit in `limit` characters, then a note naming what was left out.
fn assemble(blocks: &[String], limit: usize) -> String {
    let total: usize = blocks.iter().map(|b| b.chars().count()).sum();
    if total <= limit {
        return blocks.concat();
    }
    let mut out = String::new();
    let mut used = 0;
    let mut kept = 0;
    for b in blocks {
        let n = b.chars().count();
        if used + n > limit - NOTE_ROOM {
            break;
        }
        out.push_str(b);
        used += n;
        kept += 1;
    }
    let _ = write!(
        out,
        "\n\n> [!NOTE]\n> Truncated: the full comment would be {} characters, more than the {} a \
         GitHub comment holds; {} of its {} parts are left out. Run `listwarden plan` (or see \
         the plan artifact) for all of it.\n",
        thousands(total),
        thousands(GITHUB_COMMENT_LIMIT),
        blocks.len() - kept,
        blocks.len()
    );
    out
}

fn blocks(manifests: &Manifests, plan: &Plan, verbose: bool) -> Vec<String> {
    let mut blocks = vec![format!("{MARKER}\n### listwarden plan\n\n")];
    let limits = plan.options.accounts.default_rate_limits();
    let refused: Vec<&ListPlan> = plan.lists.iter().filter(|l| l.refused.is_some()).collect();
    let changing = plan.lists.iter().filter(|l| l.has_work()).count();
    let requests = plan_requests(plan);
    if changing > 0 {
        blocks.push(format!(
            "**{} to assert absent in {}**, in {} ({} list read{} + {}), at least {} at {}.\n\n",
            plural(plan.to_assert(), "contact"),
            plural(changing, "list"),
            plural(requests, "request"),
            thousands(changing),
            if changing == 1 { "" } else { "s" },
            plural(plan.requests(), "remove"),
            duration(crate::render::plan_least_time(plan)),
            escape(&limits.to_string())
        ));
    } else if refused.is_empty() && plan.holds.is_empty() {
        blocks.push(format!(
            "**No changes**: nothing to assert in {}.\n\n",
            plural(plan.lists.len(), "list")
        ));
    } else {
        blocks.push("**Nothing to send until the decisions below are made.**\n\n".to_string());
    }
    let mask = |text: &str| {
        if verbose {
            escape(text)
        } else {
            escape(&crate::status::mask_emails(text))
        }
    };
    if manifests.has_errors() {
        let mut b = format!(
            "> [!CAUTION]\n> **{} in the manifests**: {} invalid, left out of this plan (a \
             broken manifest never causes a removal).\n",
            plural(manifests.errors().count(), "error"),
            policies(manifests.invalid.len())
        );
        for d in manifests.errors() {
            let _ = writeln!(b, "> - {}", mask(&d.to_string()));
        }
        b.push('\n');
        blocks.push(b);
    }
    if !refused.is_empty() {
        let mut b = format!(
            "> [!WARNING]\n> **{} refused by a safety threshold** (`maxRemovalsPerSync`): \
             nothing is sent to {} until the change is checked and applied with `--force`.\n",
            plural(refused.len(), "list"),
            if refused.len() == 1 { "it" } else { "them" }
        );
        for l in &refused {
            if let Some(r) = &l.refused {
                let _ = writeln!(
                    b,
                    "> - `{}`: policy `{}` would assert {}, more than its threshold of {}",
                    l.list,
                    r.policy,
                    plural(r.would_assert, "contact"),
                    thousands(r.threshold as usize)
                );
            }
        }
        b.push('\n');
        blocks.push(b);
    }
    if !plan.holds.is_empty() {
        let mut b = format!(
            "> [!WARNING]\n> **{} held by the forget threshold** (`maxForgetPercent`): nothing \
             is sent or forgotten for {} until `listwarden approve`.\n",
            policies(plan.holds.len()),
            if plan.holds.len() == 1 { "it" } else { "them" }
        );
        for h in &plan.holds {
            let _ = writeln!(b, "> - {}", mask(&h.to_string()));
        }
        b.push('\n');
        blocks.push(b);
    }
    let (loud, quiet): (Vec<&ListPlan>, Vec<&ListPlan>) = plan
        .lists
        .iter()
        .partition(|l| l.to_assert() > 0 || l.refused.is_some() || !l.held.is_empty());
    let inline_quiet = plan.lists.len() <= QUIET_LISTS_INLINE;
    let mut shown: Vec<&ListPlan> = loud.clone();
    if inline_quiet {
        shown.extend(quiet.iter().copied());
    }
    if !shown.is_empty() {
        blocks.push(format!("{}\n", table_head()));
        for l in &shown {
            blocks.push(table_row(manifests, l));
        }
        blocks.push("\n".into());
    }
    if !inline_quiet && !quiet.is_empty() {
        let mut b = format!(
            "<details><summary>{} without changes</summary>\n\n{}\n",
            plural(quiet.len(), "list"),
            table_head()
        );
        for l in &quiet {
            b.push_str(&table_row(manifests, l));
        }
        b.push_str("\n</details>\n\n");
        blocks.push(b);
    }
    let suspended: Vec<&str> = manifests
        .policies
        .iter()
        .filter(|p| p.suspend)
        .map(|p| p.name.as_str())
        .collect();
    if !suspended.is_empty() {
        blocks.push(format!(
            "Suspended (planned, never applied): {}.\n\n",
            suspended
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if verbose {
        for l in loud.iter().filter(|l| l.to_assert() > 0) {
            blocks.push(contacts_details(manifests, l));
        }
    } else if plan.to_assert() > 0 {
        blocks.push(
            "Contacts are counted, not listed: a pull request comment is public. \
             `listwarden plan --verbose` lists them.\n\n"
                .into(),
        );
    }
    blocks.push(format!(
        "<sub>Requests count the pre-flight read of each list with changes and its remove \
         requests, before any retry. listwarden {}.</sub>\n",
        env!("CARGO_PKG_VERSION")
    ));
    blocks
}

fn table_head() -> &'static str {
    "| list | policies | must be absent | to assert | new | retry | resync | requests | |\n\
     |---|---|---:|---:|---:|---:|---:|---:|---|"
}

fn table_row(manifests: &Manifests, l: &ListPlan) -> String {
    let name = |i: &usize| format!("`{}`", manifests.policies[*i].name);
    let mut named: Vec<String> = l.policies.iter().map(name).collect();
    named.extend(
        l.suspended
            .iter()
            .map(|i| format!("{} (suspended)", name(i))),
    );
    named.extend(l.held.iter().map(|i| format!("{} (held)", name(i))));
    let (e, c) = (&l.email_counts, &l.contact_id_counts);
    let to_assert = l.to_assert();
    let (assert_cell, status) = if l.refused.is_some() {
        (thousands(to_assert), "⛔ refused")
    } else if to_assert > 0 {
        (format!("**{}**", thousands(to_assert)), "✏️ changes")
    } else if !l.held.is_empty() {
        ("0".into(), "⏸️ held")
    } else {
        ("0".into(), "✅ no changes")
    };
    format!(
        "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        l.list,
        if named.is_empty() {
            "(none active)".into()
        } else {
            named.join(", ")
        },
        thousands(e.desired + c.desired),
        assert_cell,
        thousands(e.new + c.new),
        thousands(e.retry + c.retry),
        thousands(e.resync + c.resync),
        thousands(list_requests(l)),
        status
    )
}

fn contacts_details(manifests: &Manifests, l: &ListPlan) -> String {
    let mut b = format!(
        "<details><summary>{} to assert absent in <code>{}</code></summary>\n\n",
        plural(l.to_assert(), "contact"),
        l.list
    );
    let entries = l
        .emails
        .iter()
        .map(|a| (a.contact.as_str(), a.reason, &a.policies, ""))
        .chain(
            l.contact_ids
                .iter()
                .map(|a| (a.contact.as_str(), a.reason, &a.policies, "id ")),
        );
    for (contact, reason, set, prefix) in entries.take(CONTACTS_PER_LIST) {
        let _ = writeln!(
            b,
            "- {prefix}{} ({})",
            escape(contact),
            escape(&reason_and_policies(reason, set, manifests))
        );
    }
    if l.to_assert() > CONTACTS_PER_LIST {
        let _ = writeln!(
            b,
            "- … and {} more (`listwarden plan --verbose` lists them all)",
            thousands(l.to_assert() - CONTACTS_PER_LIST)
        );
    }
    b.push_str("\n</details>\n\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_break_a_table_or_open_html() {
        let hostile = "a|b <details> `x` *y* [z](u)\nnext";
        let e = escape(hostile);
        assert!(!e.contains('<') && !e.contains('\n'), "{e}");
        assert_eq!(e.matches('|').count(), e.matches("\\|").count(), "{e}");
        assert!(e.contains("\\`x\\`") && e.contains("\\*y\\*") && e.contains("\\[z\\]"));
    }

    #[test]
    fn a_comment_over_the_limit_keeps_whole_blocks_and_says_it_was_cut() {
        let blocks: Vec<String> = (0..100)
            .map(|i| format!("{i:>4}{}\n", "x".repeat(995)))
            .collect();
        let out = assemble(&blocks, 20_000);
        assert!(out.chars().count() <= 20_000, "{}", out.len());
        assert!(out.contains("Truncated: the full comment would be 100,000 characters"));
        let kept = out.lines().filter(|l| l.ends_with('x')).count();
        assert_eq!(out.matches("parts are left out").count(), 1);
        assert!(out.contains(&format!("{} of its 100 parts are left out", 100 - kept)));
        for line in out.lines().filter(|l| l.ends_with('x')) {
            assert_eq!(line.chars().count(), 999, "a block was cut: {line:.20}");
        }
    }

    #[test]
    fn a_comment_within_the_limit_is_kept_whole() {
        let blocks = vec!["a\n".to_string(), "b\n".to_string()];
        assert_eq!(assemble(&blocks, 100), "a\nb\n");
    }
}
