//! What users of Terraform, kubectl or Flux expect around the core commands: help that
//! teaches, completions and man pages, `init`, `validate --output json`, and plans as pull
//! request comments.

mod support;

use support::{HEADER, listwarden, output, policy, run, run_in, write};

fn help(args: &[&str]) -> String {
    let out = output(listwarden().args(args).arg("--help"));
    out.code(0);
    out.stdout.clone()
}

/// `text` with every run of whitespace as one space: help is wrapped to the terminal.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

const ENV_VARS: [&str; 7] = [
    "AUTOSEND_API_KEY",
    "AUTOSEND_API_KEY_FILE",
    "AUTOSEND_API_URL",
    "AUTOSEND_PROJECT_ID",
    "LISTWARDEN_STATE",
    "LISTWARDEN_RATE_LIMIT",
    "RUST_LOG",
];

#[test]
fn help_names_every_environment_variable_where_it_applies() {
    for cmd in [&[][..], &["apply"], &["run"], &["plan"]] {
        let text = help(cmd);
        for var in ENV_VARS {
            assert!(text.contains(var), "`{cmd:?} --help` does not name {var}");
        }
    }
    let apply = flat(&help(&["apply"]));
    assert!(apply.contains("--api-url <API_URL>"), "{apply}");
    assert!(apply.contains("[env: AUTOSEND_API_URL]"), "{apply}");
    assert!(apply.contains("[env: AUTOSEND_PROJECT_ID]"), "{apply}");
    let status = flat(&help(&["status"]));
    assert!(status.contains("[env: LISTWARDEN_STATE]"), "{status}");
}

#[test]
fn help_never_renders_an_environment_variable_value_set_or_unset() {
    let set = output(
        listwarden()
            .args(["apply", "--help"])
            .env("LISTWARDEN_STATE", "/private/where-the-store-is.db")
            .env("AUTOSEND_API_URL", "https://internal.example/v1")
            .env("AUTOSEND_API_KEY", "sk-live-do-not-print")
            .env("AUTOSEND_API_KEY_FILE", "/run/secrets/key"),
    );
    set.code(0);
    for secret in [
        "where-the-store-is",
        "internal.example",
        "sk-live-do-not-print",
        "/run/secrets/key",
    ] {
        assert!(!set.stdout.contains(secret), "help shows {secret}");
    }
    let unset = output(
        listwarden()
            .args(["apply", "--help"])
            .env_remove("LISTWARDEN_STATE")
            .env_remove("AUTOSEND_API_URL"),
    );
    assert!(!unset.stdout.contains("=]"), "{}", unset.stdout);
}

#[test]
fn options_are_grouped_under_headings() {
    let apply = help(&["apply"]);
    for heading in [
        "Manifests and plan:",
        "AutoSend API:",
        "State store:",
        "Output:",
    ] {
        assert!(
            apply.contains(heading),
            "apply --help lacks {heading}\n{apply}"
        );
    }
    // The short help: one paragraph per heading.
    let short = |cmd: &str| {
        let out = output(listwarden().args([cmd, "-h"]));
        out.code(0);
        out.stdout.clone()
    };
    let under = |text: &str, heading: &str, flag: &str| {
        let section = text.split(heading).nth(1).unwrap_or("");
        let section = section.split("\n\n").next().unwrap_or("");
        assert!(
            section.contains(flag),
            "{flag} is not under {heading}:\n{text}"
        );
    };
    let apply = short("apply");
    under(&apply, "AutoSend API:", "--api-key-file");
    under(&apply, "State store:", "--state");
    under(&apply, "Manifests and plan:", "--batch-size");
    under(&apply, "Output:", "--log-format");
    let run_help = short("run");
    under(&run_help, "Daemon:", "--listen");
    under(&run_help, "Daemon:", "--interval");
    let plan = short("plan");
    under(&plan, "Output:", "--output");
    under(&plan, "Output:", "--detailed-exitcode");
}

#[test]
fn exit_codes_are_in_the_help_of_the_commands_that_use_them() {
    let apply = help(&["apply"]);
    assert!(apply.contains("Exit codes:"), "{apply}");
    assert!(
        apply.contains("  3  finished, but some contacts failed"),
        "{apply}"
    );
    let plan = help(&["plan"]);
    assert!(
        plan.contains("  2  with --detailed-exitcode only"),
        "{plan}"
    );
    let validate = help(&["validate"]);
    assert!(validate.contains("  1  an error"), "{validate}");
}

#[test]
fn top_level_help_ends_with_a_pointer_to_the_manifest_reference() {
    let text = help(&[]);
    let tail: Vec<&str> = text.trim_end().lines().rev().take(4).collect();
    assert!(
        tail.iter().any(|l| l.contains("#manifest-reference")),
        "{text}"
    );
    assert!(text.contains("listwarden schema"), "{text}");
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = output(listwarden().args(["completions", shell]));
        out.code(0);
        for word in ["listwarden", "detailed-exitcode", "api-key-file"] {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    let bad = output(listwarden().args(["completions", "tcsh"]));
    bad.code(1);
}

#[test]
fn man_pages_are_written_for_the_program_and_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(listwarden().arg("man").arg(dir.path().join("man1")));
    out.code(0);
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join("man1").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let top = page("listwarden.1");
    assert!(
        top.starts_with(".ie") || top.contains(".TH listwarden 1"),
        "{top:.200}"
    );
    for cmd in [
        "validate", "plan", "apply", "status", "run", "approve", "init",
    ] {
        let text = page(&format!("listwarden-{cmd}.1"));
        assert!(text.contains(".TH"), "listwarden-{cmd}.1 is not a man page");
    }
    assert!(page("listwarden-apply.1").contains("AUTOSEND_API_URL"));
}

#[test]
fn init_scaffolds_an_empty_folder_that_validates_and_plans() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["init", "policies"]);
    out.code(0);
    let root = dir.path();
    let policy = std::fs::read_to_string(root.join("policies/example-policy.yaml")).unwrap();
    assert!(policy.starts_with("# yaml-language-server: $schema=https://"));
    assert!(
        policy.contains("suspend: true"),
        "a scaffold must not act before it is edited"
    );
    let suppressions =
        std::fs::read_to_string(root.join("policies/suppressions/bounced.txt")).unwrap();
    assert!(suppressions.lines().any(|l| l == "bounced@example.com"));
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == ".listwarden/"), "{ignore}");
    run_in(root, &["validate", "policies"]).code(0);
    let plan = run_in(root, &["plan", "policies"]);
    plan.code(0);
    assert!(plan.stdout.contains("suspended"), "{}", plan.stdout);
}

#[test]
fn init_into_a_non_empty_folder_keeps_what_is_there_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("policies/team.yaml"),
        &policy("team", "list-t", &["t@example.com"]),
    );
    write(&root.join(".gitignore"), "target/");
    run_in(root, &["init", "policies"]).code(0);
    assert!(root.join("policies/team.yaml").exists());
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert!(ignore.starts_with("target/\n"), "{ignore}");
    assert_eq!(ignore.lines().filter(|l| *l == ".listwarden/").count(), 1);

    // Again: the sample exists now, so nothing is written and the command says why.
    write(&root.join("policies/example-policy.yaml"), "# mine\n");
    let again = run_in(root, &["init", "policies"]);
    again.code(1);
    assert!(
        again.stderr.contains("example-policy.yaml and ")
            && again
                .stderr
                .contains("already exist; init never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(root.join("policies/example-policy.yaml")).unwrap(),
        "# mine\n"
    );
    let ignore_after = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert_eq!(ignore_after, ignore, "a refused init changed .gitignore");
}

/// A folder holding `m/p.yaml`: a policy `p` with these `spec` lines.
fn one_policy(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("m/p.yaml"),
        &format!("{HEADER}metadata: {{name: p}}\nspec:\n{spec}"),
    );
    dir
}

#[test]
fn a_near_miss_field_name_is_answered_with_the_field_meant() {
    let dir = one_policy("  contactListID: list-a\n  exclude: {emails: [a@example.com]}\n");
    let out = run_in(dir.path(), &["validate", "m"]);
    out.code(1);
    out.line(
        "m/p.yaml: document 1 (p): spec.contactListID: error: ",
        &[
            "unknown field `contactListID`",
            "did you mean `contactListId`?",
        ],
    );
}

#[test]
fn validate_json_lists_policies_and_problems() {
    let ok = run(&["validate", "plan_two_lists", "--output", "json"]);
    ok.code(0);
    let doc = ok.json();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["policies"].as_array().unwrap().len(), 3);
    assert_eq!(doc["policies"][0]["name"], "news-bounces");
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0);

    let bad = run(&["validate", "several_problems", "--output", "json"]);
    bad.code(1);
    let doc = bad.json();
    assert_eq!(doc["valid"], false);
    let errors = doc["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "{doc}");
    assert!(
        errors
            .iter()
            .all(|e| e["severity"] == "error" && e["file"].is_string())
    );
    assert!(!doc["invalid_policies"].as_array().unwrap().is_empty());
    assert!(
        bad.stderr.is_empty(),
        "JSON mode keeps stderr clean: {}",
        bad.stderr
    );
}

// ---- plan --output markdown -------------------------------------------------------------------

fn markdown(args: &[&str]) -> String {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "markdown"]);
    let out = run(&all);
    out.stdout.clone()
}

/// Every table in `md` has a header, a delimiter row, and rows with as many cells as the
/// header (a `|` in a cell is escaped), and is preceded by a blank line.
fn assert_tables_are_whole(md: &str) {
    let cells = |line: &str| line.replace("\\|", "").matches('|').count();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    let mut tables = 0;
    while i < lines.len() {
        if lines[i].starts_with('|') {
            tables += 1;
            assert!(
                i == 0 || lines[i - 1].trim().is_empty(),
                "no blank line before a table:\n{md}"
            );
            let width = cells(lines[i]);
            assert!(lines[i + 1].starts_with("|---"), "no delimiter row:\n{md}");
            assert_eq!(cells(lines[i + 1]), width, "delimiter row width:\n{md}");
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                assert_eq!(cells(lines[i]), width, "a broken row: {}", lines[i]);
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    assert!(tables > 0, "no table:\n{md}");
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count()
    );
}

#[test]
fn markdown_plan_has_the_marker_a_summary_table_and_no_addresses() {
    let md = markdown(&["plan_two_lists"]);
    assert!(md.starts_with(listwarden::markdown::MARKER), "{md}");
    assert!(md.contains("### listwarden plan"));
    assert!(
        md.contains(
            "**9 contacts to assert absent in 2 lists**, in 5 requests (2 list reads + 3 removes)"
        ),
        "{md}"
    );
    assert_tables_are_whole(&md);
    let row = md
        .lines()
        .find(|l| l.starts_with("| `list-news`"))
        .expect("list-news row");
    assert!(
        row.contains("`news-bounces`, `news-legal`") && row.contains("**6**"),
        "{row}"
    );
    assert!(row.contains("✏️ changes"), "{row}");
    assert!(
        !md.contains('@'),
        "a PR comment must not publish addresses by default:\n{md}"
    );
    assert!(md.contains("counted, not listed"));
}

#[test]
fn markdown_plan_lists_addresses_only_with_verbose_in_collapsed_details() {
    let md = markdown(&["plan_two_lists", "--verbose"]);
    assert_tables_are_whole(&md);
    let details = md
        .split("<details><summary>6 contacts to assert absent in <code>list-news</code></summary>")
        .nth(1)
        .expect("a collapsed contact list")
        .split("</details>")
        .next()
        .unwrap();
    assert!(
        details.contains("- shared@example.com (new; news-bounces, news-legal)"),
        "{details}"
    );
    assert!(
        details.contains("- id cid-legal-1 (new; news-legal)"),
        "{details}"
    );
}

#[test]
fn markdown_plan_calls_out_refusals_and_invalid_policies() {
    let md = markdown(&["plan_threshold"]);
    assert!(
        md.contains("> [!WARNING]\n> **1 list refused by a safety threshold**"),
        "{md}"
    );
    assert!(
        md.contains("> - `list-careful`: policy `careful` would assert 3 contacts"),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| `list-careful`"))
        .unwrap();
    assert!(row.contains("⛔ refused"), "{row}");
    assert_tables_are_whole(&md);

    let md = markdown(&["broken_and_valid"]);
    assert!(
        md.contains("> [!CAUTION]\n> **1 error in the manifests**: 1 policy invalid"),
        "{md}"
    );
    assert!(md.contains("broken.yaml"), "{md}");
    let md = markdown(&["several_problems"]);
    assert!(
        !md.contains("ok@example.com"),
        "diagnostics are masked:\n{md}"
    );
}

/// The markdown plan of the folder `m` in `dir`.
fn markdown_of(dir: &tempfile::TempDir) -> String {
    let out = run_in(dir.path(), &["plan", "m", "--output", "markdown"]);
    out.code(0);
    out.stdout.clone()
}

#[test]
fn markdown_plan_without_changes_says_so() {
    let md = markdown_of(&one_policy("  contactListId: list-a\n"));
    assert!(
        md.contains("**No changes**: nothing to assert in 1 list."),
        "{md}"
    );
}

#[test]
fn a_plan_whose_only_change_is_refused_says_nothing_is_sent_not_no_changes() {
    let dir = one_policy(
        "  contactListId: list-a\n  maxRemovalsPerSync: 1\n  \
         exclude: {emails: [a@example.com, b@example.com]}\n",
    );
    let md = markdown_of(&dir);
    assert!(
        md.contains("**Nothing to send until the decisions below are made.**"),
        "{md}"
    );
    assert!(!md.contains("No changes"), "{md}");
    let text = run_in(dir.path(), &["plan", "m"]);
    assert!(
        text.stdout
            .contains("Plan: nothing to send now. 1 list(s) refused by a safety threshold."),
        "{}",
        text.stdout
    );
}

#[test]
fn a_huge_markdown_plan_stays_under_githubs_limit_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    for i in 0..400 {
        let emails: Vec<String> = (0..40)
            .map(|j| format!("user{i}-{j}@example.com"))
            .collect();
        yaml.push_str(&policy(&format!("p{i}"), &format!("list-{i}"), &emails));
        yaml.push_str("---\n");
    }
    write(&dir.path().join("m/many.yaml"), &yaml);
    let out = run_in(
        dir.path(),
        &["plan", "m", "--output", "markdown", "--verbose"],
    );
    out.code(0);
    let md = &out.stdout;
    assert!(
        md.chars().count() < listwarden::markdown::GITHUB_COMMENT_LIMIT,
        "{} characters",
        md.chars().count()
    );
    assert!(
        md.contains("> [!NOTE]\n> Truncated: the full comment would be"),
        "{md:.300}"
    );
    assert_tables_are_whole(md);
    assert!(md.starts_with(listwarden::markdown::MARKER));
}

#[test]
fn markdown_is_refused_with_refresh() {
    let out = run(&[
        "plan",
        "plan_two_lists",
        "--refresh",
        "--output",
        "markdown",
    ]);
    out.code(1);
    assert!(
        out.stderr
            .contains("with --refresh use --output text or json"),
        "{}",
        out.stderr
    );
}
