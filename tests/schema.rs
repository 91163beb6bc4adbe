//! The JSON Schema editors validate manifests with: it is the one the loader's types generate,
//! the repository's copy is that one, and schema and loader agree on every fixture wherever a
//! schema can state the rule.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use support::{fixtures, listwarden, output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_schema() -> Value {
    let path = repo().join("schemas/listpolicy.schema.json");
    let text = std::fs::read_to_string(&path).expect("schemas/listpolicy.schema.json");
    serde_json::from_str(&text).expect("the schema file is JSON")
}

#[test]
fn the_schema_in_the_repository_is_the_one_the_loader_types_generate() {
    let generated = listwarden::manifest::json_schema();
    assert!(
        repo_schema() == generated,
        "schemas/listpolicy.schema.json is stale; regenerate it with \
         `cargo run -- schema > schemas/listpolicy.schema.json`"
    );
    let printed = output(listwarden().arg("schema"));
    printed.code(0);
    assert_eq!(printed.json(), generated);
    assert_eq!(generated["$id"], listwarden::manifest::SCHEMA_ID);
    assert_eq!(
        generated["$schema"], "http://json-schema.org/draft-07/schema#",
        "YAML language servers read draft 7"
    );
}

#[test]
fn the_sample_manifests_name_the_schema_for_their_editor() {
    let line = "# yaml-language-server: $schema=../schemas/listpolicy.schema.json";
    for entry in std::fs::read_dir(repo().join("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().next(), Some(line), "{}", path.display());
        }
    }
}

/// Loader errors a schema of the parsed document cannot see, by fixture file and document,
/// with the reason. The list is exact: a document listed here must be refused by the loader
/// and accepted by the schema.
const BEYOND_SCHEMA: &[(&str, usize, &str)] = &[
    ("broken_and_valid/broken.yaml", 1, "email syntax"),
    (
        "csv_missing_column/policy.yaml",
        1,
        "a file source's content",
    ),
    ("duplicate_name/a.yaml", 1, "uniqueness across files"),
    ("duplicate_name/b.yaml", 2, "uniqueness across files"),
    (
        "file_source_escape/manifests/policy.yaml",
        1,
        "where a path leads",
    ),
    ("file_source_missing/policy.yaml", 1, "a file's existence"),
    (
        "ids_changed_by_yaml/policy.yaml",
        1,
        "0x60d5ec49 is a number once parsed",
    ),
    ("invalid_email/policy.yaml", 1, "email syntax"),
    (
        "text_entry_invalid/policy.yaml",
        1,
        "a file source's content",
    ),
];

/// Documents a generic YAML reader cannot turn into JSON, so no schema validator sees them.
const NOT_JSON: &[(&str, usize, &str)] = &[(
    "ids_changed_by_yaml/policy.yaml",
    3,
    "an integer beyond 64 bits (the loader takes it as the id written)",
)];

/// Every document of `file` as JSON, the way an editor's YAML language server sees it:
/// merge keys applied, `None` for one a generic YAML reader cannot turn into JSON.
fn documents(file: &Path) -> Vec<Option<Value>> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = serde_yaml::Value::deserialize(doc).ok()?;
            value.apply_merge().ok()?;
            serde_json::to_value(value).ok()
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Valid,
    Invalid,
}

#[test]
fn schema_and_loader_agree_on_every_fixture_where_a_schema_can_state_the_rule() {
    let validator = jsonschema::validator_for(&repo_schema()).expect("a valid JSON Schema");
    let mut roots: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    roots.sort();
    roots.push(repo().join("manifests"));
    let mut checked = 0;
    let mut beyond_seen = Vec::new();
    let mut disagreements = Vec::new();
    for root in &roots {
        let loaded = listwarden::manifest::load(root);
        let mut loader: BTreeMap<(PathBuf, usize), Verdict> = BTreeMap::new();
        for p in &loaded.policies {
            loader.insert((p.origin.file.clone(), p.origin.document), Verdict::Valid);
        }
        for p in &loaded.invalid {
            loader.insert((p.origin.file.clone(), p.origin.document), Verdict::Invalid);
        }
        for file in loaded.files.iter().filter(|f| f.parsed) {
            for (i, doc) in documents(&file.path).into_iter().enumerate() {
                let Some(verdict) = loader.get(&(file.path.clone(), i + 1)) else {
                    continue; // an empty document: neither a policy nor an error
                };
                let name = file
                    .path
                    .strip_prefix(fixtures())
                    .unwrap_or(&file.path)
                    .display()
                    .to_string();
                let Some(doc) = doc else {
                    if NOT_JSON.iter().any(|(f, d, _)| *f == name && *d == i + 1) {
                        beyond_seen.push((name.clone(), i + 1));
                    } else {
                        disagreements.push(format!("{name} #{}: not readable as JSON", i + 1));
                    }
                    continue;
                };
                checked += 1;
                let schema_ok = validator.is_valid(&doc);
                let beyond = BEYOND_SCHEMA
                    .iter()
                    .find(|(f, d, _)| *f == name && *d == i + 1);
                if beyond.is_some() {
                    beyond_seen.push((name.clone(), i + 1));
                }
                let expected_schema_ok = match verdict {
                    Verdict::Valid => true,
                    Verdict::Invalid => beyond.is_some(),
                };
                if schema_ok != expected_schema_ok {
                    let why: Vec<String> = validator
                        .iter_errors(&doc)
                        .map(|e| format!("{} at {}", e, e.instance_path()))
                        .collect();
                    disagreements.push(format!(
                        "{name} #{}: loader {verdict:?}, schema {} {why:?}",
                        i + 1,
                        if schema_ok { "valid" } else { "invalid" },
                    ));
                }
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    for (file, doc, _) in BEYOND_SCHEMA.iter().chain(NOT_JSON) {
        assert!(
            beyond_seen.iter().any(|(f, d)| f == file && d == doc),
            "{file} #{doc} is listed as beyond the schema but was not checked"
        );
    }
    assert!(checked >= 30, "only {checked} documents checked");
}

#[test]
fn a_scaffolded_policy_passes_the_schema_and_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(listwarden().arg("init").arg("m").current_dir(dir.path()));
    out.code(0);
    let policy = dir.path().join("m/example-policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        format!(
            "# yaml-language-server: $schema={}",
            listwarden::manifest::SCHEMA_ID
        )
    );
    let validator = jsonschema::validator_for(&repo_schema()).unwrap();
    for doc in documents(&policy) {
        assert!(validator.is_valid(&doc.unwrap()));
    }
    let loaded = listwarden::manifest::load(&dir.path().join("m"));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.policies.len(), 1);
}

#[test]
fn the_schema_takes_event_sources_and_refuses_the_ones_that_cannot_name_a_contact() {
    let validator = jsonschema::validator_for(&repo_schema()).unwrap();
    let policy = |events: Value| {
        serde_json::json!({
            "apiVersion": "listwarden.dev/v1",
            "kind": "ListPolicy",
            "metadata": {"name": "bounces"},
            "spec": {"contactListId": "list-a", "exclude": {"events": events}}
        })
    };
    let valid = policy(serde_json::json!([
        {"type": "email.bounced", "bounceType": "Permanent"},
        {"type": "email.bounced"},
        {"type": "email.spam_reported"}
    ]));
    assert!(validator.is_valid(&valid));
    for entry in [
        serde_json::json!({"type": "email.unsubscribed"}),
        serde_json::json!({"type": "contact.updated"}),
        serde_json::json!({"bounceType": "Permanent"}),
        serde_json::json!({"type": "email.spam_reported", "bounceType": "Transient"}),
        serde_json::json!({"type": "email.bounced", "bounceType": "permanent"}),
    ] {
        assert!(
            !validator.is_valid(&policy(serde_json::json!([entry]))),
            "{entry}"
        );
    }
}
