//! `listwarden validate`: every kind of manifest problem is reported with the exact file and
//! line/column or field path, every problem of a run is reported at once, and the exit code
//! is 0 when valid (warnings allowed) and 1 on any error.
//!
//! Fixtures live in `tests/fixtures/<kind>/`; the binary runs from `tests/fixtures/`, so the
//! paths in the messages are the short relative ones asserted here. Symlinks and `.git`
//! directories are built in temp dirs by the tests themselves (git refuses to commit a
//! `.git` path, and committed symlinks do not survive every checkout).

mod support;

use support::{HEADER, Policy, policy, run, run_in, write};

#[test]
fn unknown_field_is_an_error_naming_the_field_path() {
    let r = run(&["validate", "unknown_field"]);
    r.code(1);
    r.line(
        "unknown_field/policy.yaml: document 1 (typo): spec.exlcude: error: ",
        &[
            "unknown field `exlcude`",
            "`exclude`",
            "did you mean `exclude`?",
        ],
    );
    assert!(
        r.stderr.contains("0 valid policies, 1 invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn wrong_api_version_is_an_error_naming_the_supported_one() {
    let r = run(&["validate", "wrong_api_version"]);
    r.code(1);
    r.line(
        "wrong_api_version/policy.yaml: document 1 (future): apiVersion: error: ",
        &["\"listwarden.dev/v2\"", "use \"listwarden.dev/v1\""],
    );
}

#[test]
fn wrong_kind_is_an_error_naming_list_policy() {
    let r = run(&["validate", "wrong_kind"]);
    r.code(1);
    r.line(
        "wrong_kind/policy.yaml: document 1 (plural): kind: error: ",
        &["unsupported kind \"ListPolicies\"", "kind: ListPolicy"],
    );
}

#[test]
fn missing_metadata_name_is_an_error_on_the_document_without_a_name() {
    let r = run(&["validate", "missing_name"]);
    r.code(1);
    r.line(
        "missing_name/policy.yaml: document 1: metadata.name: error: ",
        &["missing name"],
    );
}

#[test]
fn invalid_name_is_an_error_quoting_the_rule() {
    let r = run(&["validate", "invalid_name"]);
    r.code(1);
    r.line(
        "invalid_name/policy.yaml: document 1 (Newsletter_Suppressions): metadata.name: error: ",
        &[
            "\"Newsletter_Suppressions\"",
            "lowercase letters, digits and '-'",
        ],
    );
}

#[test]
fn name_duplicated_across_files_invalidates_both_and_names_both_places() {
    let r = run(&["validate", "duplicate_name"]);
    r.code(1);
    r.line(
        "duplicate_name/a.yaml: document 1 (shared-name): metadata.name: error: ",
        &[
            "\"shared-name\"",
            "also used by duplicate_name/b.yaml document 2",
        ],
    );
    r.line(
        "duplicate_name/b.yaml: document 2 (shared-name): metadata.name: error: ",
        &[
            "\"shared-name\"",
            "also used by duplicate_name/a.yaml document 1",
        ],
    );
    // `other` in b.yaml stays valid; both `shared-name` documents are invalid.
    assert!(
        r.stderr
            .contains("2 error(s), 0 warning(s); 1 valid policy, 2 invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn name_duplicated_across_files_leaves_both_out_of_the_plan() {
    let r = run(&["plan", "duplicate_name", "--output", "json"]);
    r.code(1);
    let doc = r.json();
    let names: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other"]);
    let invalid: Vec<(&str, &str, u64)> = doc["invalid_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["origin"]["file"].as_str().unwrap(),
                p["origin"]["document"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        invalid,
        [
            ("shared-name", "duplicate_name/a.yaml", 1),
            ("shared-name", "duplicate_name/b.yaml", 2)
        ]
    );
}

#[test]
fn contact_list_id_with_invalid_characters_is_an_error() {
    let r = run(&["validate", "list_id_chars"]);
    r.code(1);
    r.line(
        "list_id_chars/policy.yaml: document 1 (slashy): spec.contactListId: error: ",
        &["\"lists/60d5ec49\"", "contains '/'"],
    );
}

#[test]
fn contact_list_id_longer_than_64_characters_is_an_error() {
    let r = run(&["validate", "list_id_too_long"]);
    r.code(1);
    r.line(
        "list_id_too_long/policy.yaml: document 1 (long-id): spec.contactListId: error: ",
        &["is 65 characters long", "at most 64"],
    );
}

#[test]
fn global_contact_list_is_refused_pointing_to_the_delete_contact_api() {
    let r = run(&["validate", "list_id_global"]);
    r.code(1);
    r.line(
        "list_id_global/policy.yaml: document 1 (everyone): spec.contactListId: error: ",
        &["GLOBAL_CONTACT_LIST cannot be used", "delete-contact API"],
    );
}

#[test]
fn invalid_inline_email_is_an_error_naming_its_index() {
    let r = run(&["validate", "invalid_email"]);
    r.code(1);
    r.line(
        "invalid_email/policy.yaml: document 1 (bad-email): spec.exclude.emails[1]: error: ",
        &["\"jane.example.com\" is not a valid email address"],
    );
    assert_eq!(r.errors().len(), 1, "{}", r.stderr);
}

#[test]
fn invalid_contact_id_is_an_error_naming_its_index() {
    let r = run(&["validate", "invalid_contact_id"]);
    r.code(1);
    r.line(
        "invalid_contact_id/policy.yaml: document 1 (bad-id): spec.exclude.contactIds[2]: error: ",
        &["\"../../admin\"", "contains '.'"],
    );
    assert_eq!(r.errors().len(), 1, "{}", r.stderr);
}

#[test]
fn max_removals_per_sync_of_zero_is_an_error() {
    let r = run(&["validate", "max_removals_zero"]);
    r.code(1);
    r.line(
        "max_removals_zero/policy.yaml: document 1 (zero): spec.maxRemovalsPerSync: error: ",
        &["must be a positive integer, got 0"],
    );
}

#[test]
fn negative_max_removals_per_sync_is_an_error() {
    let r = run(&["validate", "max_removals_negative"]);
    r.code(1);
    r.line(
        "max_removals_negative/policy.yaml: document 1 (negative): spec.maxRemovalsPerSync: error: ",
        &["must be a positive integer, got -5"],
    );
}

#[test]
fn missing_file_source_is_an_error_naming_the_resolved_path() {
    let r = run(&["validate", "file_source_missing"]);
    r.code(1);
    r.line(
        "file_source_missing/policy.yaml: document 1 (missing-file): spec.exclude.files[0].path: error: ",
        &[
            "cannot read file_source_missing/suppressions/bounced.txt: no such file",
            "relative to the manifest's directory",
        ],
    );
}

#[test]
fn file_source_escaping_the_root_with_dotdot_is_an_error() {
    // The loaded root is `file_source_escape/manifests`; `../outside.txt` exists but is
    // outside it.
    let r = run(&["validate", "file_source_escape/manifests"]);
    r.code(1);
    r.line(
        "file_source_escape/manifests/policy.yaml: document 1 (escaper): spec.exclude.files[0].path: error: ",
        &["\"../outside.txt\" resolves to", "outside the loaded root"],
    );
    // Loading the parent directory instead makes the same file legitimate.
    run(&["validate", "file_source_escape"]).code(0);
}

#[cfg(unix)]
#[test]
fn file_source_symlink_pointing_outside_the_root_is_an_error() {
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("secrets.txt"), "secret@example.com\n");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("manifests");
    write(
        &root.join("policy.yaml"),
        &Policy::new("linked", "list-a").file("data/list.txt").yaml(),
    );
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secrets.txt"),
        root.join("data/list.txt"),
    )
    .unwrap();
    let r = run_in(dir.path(), &["validate", "manifests"]);
    r.code(1);
    r.line(
        "manifests/policy.yaml: document 1 (linked): spec.exclude.files[0].path: error: ",
        &[
            "\"data/list.txt\" resolves to",
            "outside the loaded root",
            "symlink",
        ],
    );

    // A symlink that stays inside the root is fine.
    write(&root.join("real/list.txt"), "inside@example.com\n");
    std::fs::remove_file(root.join("data/list.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("real/list.txt"), root.join("data/list.txt")).unwrap();
    run_in(dir.path(), &["validate", "manifests"]).code(0);
}

#[test]
fn invalid_entry_in_a_text_file_source_names_file_line_and_column() {
    let r = run(&["validate", "text_entry_invalid"]);
    r.code(1);
    // Line 4 is `   not-an-email   # oops`: the entry starts at column 4, and the trailing
    // comment is not part of it.
    r.line(
        "text_entry_invalid/bounced.txt:4:4: error: ",
        &[
            "\"not-an-email\" is not a valid email address",
            "(policy bounces, spec.exclude.files[0])",
        ],
    );
    assert_eq!(r.errors().len(), 1, "{}", r.stderr);
}

#[test]
fn many_invalid_entries_are_capped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("m/policy.yaml"),
        &Policy::new("wrong-column", "list-a").file("ids.txt").yaml(),
    );
    let text: String = (0..100).map(|i| format!("id-{i}\n")).collect();
    write(&dir.path().join("m/ids.txt"), &text);
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    r.line("m/ids.txt:1:1: error: ", &["\"id-0\""]);
    r.line("m/ids.txt:20:1: error: ", &["\"id-19\""]);
    assert!(!r.stderr.contains("m/ids.txt:21:1:"), "{}", r.stderr);
    r.line(
        "m/ids.txt: error: 80 more invalid entries not listed",
        &["is `type` or `column` right?"],
    );
}

#[test]
fn csv_without_the_column_lists_the_headers_it_has() {
    let r = run(&["validate", "csv_missing_column"]);
    r.code(1);
    r.line(
        "csv_missing_column/policy.yaml: document 1 (crm-export): spec.exclude.files[0]: error: ",
        &[
            "csv_missing_column/export.csv: the CSV has no column \"email\"",
            r#"["id", "mail", "unsubscribed_at"]"#,
        ],
    );
}

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let r = run(&["validate", "yaml_syntax"]);
    r.code(1);
    // The flow sequence opened on line 8 is never closed: libyaml notices at the end of the
    // file (line 9, column 1) and says where the sequence started.
    let line = r.line(
        "yaml_syntax/policy.yaml:9:1: error: YAML syntax error: ",
        &[
            "did not find expected ',' or ']'",
            "flow sequence at line 8 column 13",
        ],
    );
    // The problem's own place is the `path:9:1:` prefix, not repeated in the message.
    assert!(!line.contains("at line 9 column 1"), "{line}");
}

#[test]
fn tab_indentation_is_a_yaml_syntax_error_at_its_line() {
    let r = run(&["validate", "several_problems/team-a/syntax.yml"]);
    r.code(1);
    r.line(
        "several_problems/team-a/syntax.yml:5:1: error: YAML syntax error: ",
        &["tab character"],
    );
}

#[test]
fn empty_policy_is_a_warning_and_exits_zero() {
    let r = run(&["validate", "empty_policy"]);
    r.code(0);
    r.line(
        "empty_policy/policy.yaml: document 1 (nothing-yet): spec.exclude: warning: ",
        &["excludes nothing"],
    );
    assert!(r.errors().is_empty(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("1 valid policy in 1 file(s), 1 warning(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn duplicates_inside_a_policy_are_a_warning_and_removed() {
    let r = run(&["validate", "duplicates"]);
    r.code(0);
    // jane x3 (case and spaces normalised) and bob x2 (inline + file): 3 removed.
    r.line(
        "duplicates/policy.yaml: document 1 (dups): spec.exclude: warning: ",
        &["3 duplicate entries removed"],
    );
    let plan = run(&["plan", "duplicates", "--output", "json"]);
    plan.code(0);
    let doc = plan.json();
    assert_eq!(doc["lists"][0]["emails"]["desired"], 3);
    assert_eq!(doc["policies"][0]["emails"], 3);
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1);
}

#[test]
fn every_problem_in_every_file_is_reported_in_one_run() {
    let r = run(&["validate", "several_problems"]);
    r.code(1);
    let errors = r.errors();
    assert_eq!(errors.len(), 6, "{}", r.stderr);
    let prefixes = [
        "several_problems/team-a/news.yaml: document 1 (news): spec.maxRemovalsPerSync: error: ",
        "several_problems/team-a/news.yaml: document 1 (news): spec.exclude.emails[1]: error: ",
        "several_problems/team-a/syntax.yml:5:1: error: ",
        "several_problems/team-b/promo.yaml: document 1 (promo): spec.contactListId: error: ",
        "several_problems/team-b/promo.yaml: document 1 (promo): spec.exclude.contactIds[0]: error: ",
        "several_problems/team-b/promo.yaml: document 2 (promo-two): kind: error: ",
    ];
    // In file order, and within a file in the order found.
    for (line, prefix) in errors.iter().zip(prefixes) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start with {prefix:?}"
        );
    }
    assert!(
        r.stderr
            .contains("several_problems: 6 error(s), 0 warning(s); 0 valid policies, 3 invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn hidden_directories_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("ok.yaml"),
        &policy("ok", "list-a", &["a@example.com"]),
    );
    write(&m.join(".git/x.yaml"), "this: is: not: yaml: [\n");
    write(&m.join(".hidden/y.yaml"), "kind: Nope\n");
    write(&m.join(".z.yaml"), "kind: Nope\n");
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(0);
    assert!(
        r.stdout
            .contains("m: 1 valid policy in 1 file(s), 0 warning(s)"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn only_yaml_and_yml_files_are_manifests_searched_recursively() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("a.yaml"),
        &policy("a", "list-a", &["a@example.com"]),
    );
    write(
        &m.join("deep/er/b.yml"),
        &policy("b", "list-b", &["b@example.com"]),
    );
    write(&m.join("notes.txt"), "kind: Nope\n");
    write(&m.join("c.json"), "{}");
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(0);
    assert!(
        r.stdout.contains("2 valid policies in 2 file(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn multi_document_file_with_empty_trailing_document_is_valid() {
    let r = run(&["validate", "multi_document"]);
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("multi_document: 3 valid policies in 1 file(s), 0 warning(s)"),
        "{}",
        r.stdout
    );
    let plan = run(&["plan", "multi_document", "--output", "json"]);
    let doc = plan.json();
    let docs: Vec<(&str, u64)> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["document"].as_u64().unwrap()))
        .collect();
    // A comment before the first `---` opens no document: `first` is document 1.
    assert_eq!(docs, [("first", 1), ("second", 2), ("third", 3)]);
}

#[test]
fn error_in_one_document_does_not_invalidate_its_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}---\n{}",
        policy("good", "list-a", &["a@example.com"]),
        policy("bad", "list-b", &["nope"])
    );
    write(&dir.path().join("m/p.yaml"), &text);
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    r.line(
        "m/p.yaml: document 2 (bad): spec.exclude.emails[0]: error: ",
        &["\"nope\""],
    );
    assert!(
        r.stderr.contains("1 valid policy, 1 invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn yaml_syntax_error_drops_every_policy_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}---\nmetadata: [unclosed\n",
        policy("before", "list-a", &["a@example.com"])
    );
    write(&dir.path().join("m/p.yaml"), &text);
    write(
        &dir.path().join("m/q.yaml"),
        &policy("other-file", "list-b", &["b@example.com"]),
    );
    let r = run_in(dir.path(), &["plan", "m", "--output", "json"]);
    r.code(1);
    let doc = r.json();
    let names: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other-file"]);
    assert_eq!(doc["invalid_policies"][0]["name"], "before");
    let err = &doc["errors"][0];
    assert_eq!(err["file"], "m/p.yaml");
    // The unclosed `[` of line 11 is noticed at the end of the file.
    assert_eq!(err["line"], 12);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("at line 11 column 11"),
        "{err}"
    );
}

#[test]
fn missing_manifests_path_is_an_error() {
    let r = run(&["validate", "no_such_dir"]);
    r.code(1);
    r.line(
        "error: manifests path no_such_dir does not exist",
        &["give a manifest file or a directory of them"],
    );
}

#[test]
fn single_manifest_file_can_be_validated() {
    let r = run(&["validate", "multi_document/policies.yaml"]);
    r.code(0);
    assert!(
        r.stdout.contains("3 valid policies in 1 file(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn repository_sample_manifests_are_valid() {
    let r = run_in(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["validate", "manifests/"],
    );
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("manifests/: 3 valid policies in 2 file(s), 0 warning(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn unquoted_numeric_ids_and_yaml_merge_keys_are_accepted() {
    let r = run(&["validate", "yaml_merge_and_numeric_ids"]);
    r.code(0);
    let plan = run(&[
        "plan",
        "yaml_merge_and_numeric_ids",
        "--output",
        "json",
        "--verbose",
    ]);
    plan.code(0);
    let doc = plan.json();
    let ids: Vec<&str> = doc["lists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["contact_list_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["12345", "list-b"]);
    assert_eq!(
        doc["lists"][0]["contacts"]["contact_ids"],
        serde_json::json!(["111", "abc-2"])
    );
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_fails_only_that_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("ok.yaml"),
        &policy("ok", "list-a", &["a@example.com"]),
    );
    std::os::unix::fs::symlink("gone.yaml", m.join("x.yaml")).unwrap();
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    r.line(
        "m/x.yaml: error: ",
        &[
            "cannot read the manifest",
            "a symlink to gone.yaml, which does not exist",
            "policies are left out",
        ],
    );
    assert_eq!(r.errors().len(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("m: 1 error(s), 0 warning(s); 1 valid policy, 0 invalid"),
        "{}",
        r.stderr
    );
    let plan = run_in(dir.path(), &["plan", "m", "--output", "json"]);
    plan.code(1);
    let doc = plan.json();
    assert_eq!(doc["policies"][0]["name"], "ok");
    assert_eq!(doc["policies"].as_array().unwrap().len(), 1);
    assert_eq!(doc["errors"][0]["file"], "m/x.yaml");
}

#[cfg(unix)]
#[test]
fn unreadable_entries_that_are_not_manifests_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("ok.yaml"),
        &policy("ok", "list-a", &["a@example.com"]),
    );
    std::os::unix::fs::symlink("missing.txt", m.join("notes.txt")).unwrap();
    std::fs::create_dir_all(m.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", m.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink("itself", m.join("itself")).unwrap();
    // Broken or not, a hidden entry stays skipped.
    std::os::unix::fs::symlink("missing.yaml", m.join(".draft.yaml")).unwrap();
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(0);
    r.line(
        "m/notes.txt: warning: ",
        &[
            "a symlink to missing.txt, which does not exist",
            "not a manifest by name",
        ],
    );
    r.line(
        "m/sub/loop: warning: ",
        &[
            "a symlink loop (it leads back to m)",
            "not a manifest by name",
        ],
    );
    r.line("m/itself: warning: ", &["not a manifest by name"]);
    assert_eq!(r.warnings().len(), 3, "{}", r.stderr);
    assert!(r.errors().is_empty(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("m: 1 valid policy in 1 file(s), 3 warning(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn deeply_nested_flow_collections_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("ok.yaml"),
        &policy("ok", "list-a", &["a@example.com"]),
    );
    // libyaml takes seconds on this (quadratic in the nesting); the pre-scan stops at the
    // 65th `{`, at column 1 + 4 * 64.
    write(&m.join("deep.yaml"), &"{a: ".repeat(50_000));
    write(
        &m.join("brackets.yaml"),
        &format!("a: {}\n", "[".repeat(65)),
    );
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    r.line(
        "m/deep.yaml:1:257: error: ",
        &[
            "nested more than 64 deep",
            "write the nested parts as indented blocks",
        ],
    );
    r.line(
        "m/brackets.yaml:1:68: error: ",
        &["nested more than 64 deep"],
    );
    assert!(
        r.stderr
            .contains("2 error(s), 0 warning(s); 1 valid policy"),
        "{}",
        r.stderr
    );
}

#[test]
fn brackets_in_quotes_and_comments_do_not_count_as_nesting() {
    let dir = tempfile::tempdir().unwrap();
    let many = "[{".repeat(100);
    let text = format!(
        "# {many}\n{HEADER}metadata:\n  name: quoted\n  labels:\n    a: \"{many}\"\n    b: '{many}'\n    c: it's {many}\nspec:\n  contactListId: list-a # {many}\n  exclude:\n    emails: [\"o'brien+#1@example.com\", jane@example.com] # {many}\n"
    );
    write(&dir.path().join("m/p.yaml"), &text);
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn a_manifest_over_the_size_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write(
        &m.join("ok.yaml"),
        &policy("ok", "list-a", &["a@example.com"]),
    );
    // Sparse: no 64 MiB written to disk.
    let big = std::fs::File::create(m.join("big.yaml")).unwrap();
    big.set_len(64 * 1024 * 1024 + 1).unwrap();
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    r.line(
        "m/big.yaml: error: ",
        &[
            "the manifest is 67108865 bytes, more than the 64 MiB",
            "keep large exclusion sets in a file source",
        ],
    );
    assert!(
        r.stderr
            .contains("1 error(s), 0 warning(s); 1 valid policy"),
        "{}",
        r.stderr
    );
}

#[test]
fn unquoted_ids_that_yaml_reads_as_other_values_must_be_quoted() {
    let r = run(&["validate", "ids_changed_by_yaml"]);
    r.code(1);
    let doc =
        |n: u32, name: &str| format!("ids_changed_by_yaml/policy.yaml: document {n} ({name}): ");
    r.line(
        &format!("{}spec.contactListId: error: ", doc(1, "hex-list")),
        &[
            "0x60d5ec49 is read by YAML as the number 1624632393",
            r#"write it quoted: contactListId: "0x60d5ec49""#,
        ],
    );
    for (i, fragments) in [
        (0, ["the number 511", r#"write it quoted: "0o777""#]),
        (1, ["the number 12345", r#"write it quoted: "+12345""#]),
        (2, ["looks like a number", r#"write it quoted: "012345""#]),
        (3, ["read by YAML as a number", r#"write it quoted: "1.5""#]),
        (4, ["the boolean true", r#"write it quoted: "true""#]),
    ] {
        r.line(
            &format!(
                "{}spec.exclude.contactIds[{i}]: error: ",
                doc(2, "odd-contacts")
            ),
            &fragments,
        );
    }
    // 111 and the quoted "0x2" are fine; a 30-digit decimal is an id, not a broken file.
    assert_eq!(r.errors().len(), 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 valid policy, 2 invalid"),
        "{}",
        r.stderr
    );
    let plan = run(&[
        "plan",
        "ids_changed_by_yaml",
        "--output",
        "json",
        "--verbose",
    ]);
    let plan = plan.json();
    assert_eq!(plan["policies"][0]["name"], "long-decimal");
    assert_eq!(
        plan["lists"][0]["contact_list_id"],
        "123456789012345678901234567890"
    );
    assert_eq!(
        plan["lists"][0]["contacts"]["contact_ids"],
        serde_json::json!(["98765432109876543210987654321"])
    );
}

#[test]
fn a_one_megabyte_entry_is_quoted_short_with_its_length() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("m/policy.yaml"),
        &Policy::new("huge", "list-a").file("one-line.txt").yaml(),
    );
    write(
        &dir.path().join("m/one-line.txt"),
        &format!("{}\n", "a".repeat(1 << 20)),
    );
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    let line = r.line(
        "m/one-line.txt:1:1: error: \"aaaa",
        &[
            "…\" (1048576 bytes) is not a valid email address",
            "write it as local@domain.tld",
            "(policy huge, spec.exclude.files[0])",
        ],
    );
    assert!(line.len() < 1024, "{} bytes", line.len());
    assert!(r.stderr.len() < 2048, "{} bytes of stderr", r.stderr.len());
}

#[test]
fn values_repeated_by_the_yaml_library_are_quoted_short_too() {
    let dir = tempfile::tempdir().unwrap();
    let big = "b".repeat(100_000);
    write(
        &dir.path().join("m/policy.yaml"),
        &format!(
            "{HEADER}metadata:\n  name: {big}\nspec:\n  contactListId: list-a\n  strategy: {big}\n"
        ),
    );
    let r = run_in(dir.path(), &["validate", "m"]);
    r.code(1);
    let line = r.line(
        "m/policy.yaml: document 1 (bbbb",
        &[
            "… (100000 bytes)): spec.strategy: error: unknown variant `bbbb",
            "…` (100000 bytes), expected one of `auto`, `assert`, `observe`",
            "use one of the listed values",
        ],
    );
    assert!(line.len() < 1024, "{} bytes", line.len());
}
