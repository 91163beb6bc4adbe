//! The deployment examples in `examples/deploy/` stay valid: every YAML document parses, the
//! key fields are where operators expect them, and every listwarden command line in them is
//! accepted by the real CLI (the workflow's `plan` and `validate` are run for real).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;
use support::{listwarden, output};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every document of a YAML stream.
fn documents(name: &str) -> Vec<Value> {
    let text = read(name);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The CLI accepts `args` (subcommand, flags and values): clap parses and validates every
/// argument before `--help`, so an unknown flag or a bad value fails here.
#[track_caller]
fn assert_cli_accepts(args: &[String]) {
    let mut with_help = args.to_vec();
    with_help.push("--help".into());
    let out = output(listwarden().args(&with_help));
    assert!(
        out.code == 0,
        "listwarden {} is refused:\n{}",
        args.join(" "),
        out.stderr
    );
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} document"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifest_has_probes_port_secret_sidecar_service_and_monitor() {
    let docs = documents("kubernetes.yaml");
    for d in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "no apiVersion in {d:?}");
        assert!(d["kind"].as_str().is_some(), "no kind in {d:?}");
        assert!(str_at(d, &["metadata", "name"]).is_some());
    }
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    let lw = containers
        .iter()
        .find(|c| c["name"] == "listwarden")
        .expect("a listwarden container");
    let sync = containers
        .iter()
        .find(|c| c["name"] == "git-sync")
        .expect("a git-sync sidecar");

    // Probes on the named port, which is 9464.
    assert_eq!(
        str_at(lw, &["livenessProbe", "httpGet", "path"]),
        Some("/healthz")
    );
    assert_eq!(
        str_at(lw, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz")
    );
    let port_name = str_at(lw, &["readinessProbe", "httpGet", "port"]).expect("probe port");
    let port = lw["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port_name)
        .expect("the probes' port");
    assert_eq!(port["containerPort"].as_u64(), Some(9464));

    // The key from a Secret.
    let key = lw["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "AUTOSEND_API_KEY")
        .expect("AUTOSEND_API_KEY");
    assert!(str_at(key, &["valueFrom", "secretKeyRef", "name"]).is_some());
    assert!(str_at(key, &["valueFrom", "secretKeyRef", "key"]).is_some());

    // The command line: run on the git-sync checkout, listening on 9464, state on a volume.
    let args = strings(&lw["args"]);
    assert_eq!(args[0], "run");
    assert!(
        args.windows(2).any(|w| w == ["--listen", "0.0.0.0:9464"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--state", "/var/lib/listwarden/state.db"]),
        "{args:?}"
    );
    assert_cli_accepts(&args);

    let mount = |c: &Value, volume: &str| -> Option<String> {
        c["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str().map(String::from))
    };
    let git_in_lw = mount(lw, "git").expect("listwarden mounts the git volume");
    let git_in_sync = mount(sync, "git").expect("git-sync mounts the git volume");
    assert!(
        args[1].starts_with(&git_in_lw),
        "run path {} not under {git_in_lw}",
        args[1]
    );
    let sync_args = strings(&sync["args"]);
    let root = sync_args
        .iter()
        .find_map(|a| a.strip_prefix("--root="))
        .expect("git-sync --root");
    let link = sync_args
        .iter()
        .find_map(|a| a.strip_prefix("--link="))
        .expect("git-sync --link");
    assert_eq!(root, git_in_sync);
    assert!(
        args[1].starts_with(&format!("{git_in_lw}/{link}/")),
        "listwarden must read through git-sync's link: {}",
        args[1]
    );
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert!(volume("git").get("emptyDir").is_some());
    let state_mount = mount(lw, "state").expect("a state volume");
    assert_eq!(state_mount, "/var/lib/listwarden");
    let state = volume("state");
    assert!(state.get("persistentVolumeClaim").is_some() || state.get("emptyDir").is_some());
    if let Some(claim) = str_at(state, &["persistentVolumeClaim", "claimName"]) {
        let pvc = kind(&docs, "PersistentVolumeClaim");
        assert_eq!(str_at(pvc, &["metadata", "name"]), Some(claim));
    }
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1));

    // The Service exposes 9464 and selects the pods; the ServiceMonitor scrapes /metrics.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = kind(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let sport = &service["spec"]["ports"][0];
    assert_eq!(sport["port"].as_u64(), Some(9464));
    let monitor = kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let ep = &monitor["spec"]["endpoints"][0];
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["port"], sport["name"]);
    let service_labels = &service["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &service_labels[k], v,
            "the ServiceMonitor does not select the Service"
        );
    }
}

/// The listwarden command lines of a workflow step's `run:` script (up to a shell operator).
fn commands_in(script: &str) -> Vec<Vec<String>> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("listwarden "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take_while(|t| !matches!(*t, ">" | "|" | "||" | "&&" | ";" | "2>&1"))
                .map(String::from)
                .collect()
        })
        .collect()
}

#[test]
fn github_workflow_plans_pull_requests_and_applies_main() {
    let docs = documents("github-workflow.yaml");
    assert_eq!(docs.len(), 1);
    let wf = &docs[0];
    let on = &wf["on"];
    assert!(on.get("pull_request").is_some(), "not run on pull requests");
    assert!(strings(&on["push"]["branches"]).contains(&"main".to_string()));
    let jobs = wf["jobs"].as_mapping().expect("jobs");
    let mut plan_lines = Vec::new();
    let mut apply_lines = Vec::new();
    let mut all_commands = Vec::new();
    let mut key_from_secrets = false;
    let mut uses = Vec::new();
    let mut comment_scripts = Vec::new();
    for (_, job) in jobs {
        for step in job["steps"].as_sequence().expect("steps") {
            if let Some(u) = step["uses"].as_str() {
                uses.push(u.to_string());
                if u.starts_with("actions/github-script")
                    && let Some(script) = str_at(step, &["with", "script"])
                {
                    comment_scripts.push(script.to_string());
                }
            }
            let Some(script) = step["run"].as_str() else {
                continue;
            };
            for cmd in commands_in(script) {
                match cmd[0].as_str() {
                    "plan" => plan_lines.push(cmd.clone()),
                    "apply" => {
                        apply_lines.push(cmd.clone());
                        let key = str_at(step, &["env", "AUTOSEND_API_KEY"]).unwrap_or("");
                        key_from_secrets |= key.contains("secrets.");
                    }
                    _ => {}
                }
                all_commands.push(cmd);
            }
        }
    }
    let detailed = plan_lines
        .iter()
        .find(|c| {
            let s = c.join(" ");
            s.contains("--detailed-exitcode") && s.contains("--output json")
        })
        .expect("a `plan --detailed-exitcode --output json` step");
    let markdown = plan_lines
        .iter()
        .find(|c| c.join(" ").contains("--output markdown"))
        .expect("a `plan --output markdown` step for the pull request comment");
    let marker = listwarden::markdown::MARKER;
    assert!(
        comment_scripts
            .iter()
            .any(|s| s.contains(marker) && s.contains("updateComment")),
        "the comment step must update the one comment holding {marker}: {comment_scripts:?}"
    );
    assert!(!apply_lines.is_empty(), "no apply step");
    assert!(
        key_from_secrets,
        "the apply step must take AUTOSEND_API_KEY from secrets"
    );
    assert!(
        uses.iter().any(|u| u.starts_with("actions/cache")),
        "the state store is not persisted: {uses:?}"
    );
    for cmd in &all_commands {
        assert_cli_accepts(cmd);
    }

    // Run the plan exactly as the workflow does, in a copy of the repository's manifests.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"),
        &dir.path().join("manifests"),
    );
    let run = |args: &[String]| {
        output(
            listwarden()
                .args(args)
                .current_dir(dir.path())
                .env("LISTWARDEN_STATE", dir.path().join(".listwarden/state.db")),
        )
    };
    for cmd in all_commands.iter().filter(|c| c[0] == "validate") {
        run(cmd).code(0);
    }
    let out = run(detailed);
    out.code(2);
    let doc = out.json();
    assert!(doc["format_version"].is_u64(), "{doc}");
    let comment = run(markdown);
    comment.code(0);
    assert!(comment.stdout.starts_with(marker), "{}", comment.stdout);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `Key=value` settings of a unit file, continuation lines joined, comments dropped.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#') || t.starts_with('[')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        if let Some((k, v)) = pending.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
        pending.clear();
    }
    out
}

#[test]
fn systemd_unit_is_hardened_takes_the_key_as_a_credential_and_verifies() {
    let text = read("listwarden.service");
    let settings = unit_settings(&text);
    let get = |k: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| -> &str {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k}: {v:?}");
        v[0]
    };
    assert_eq!(
        one("LoadCredential"),
        "autosend-api-key:/etc/listwarden/api-key"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "listwarden"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(get(k).contains(&v), "{k}={v} missing");
    }
    assert!(!get("RestrictAddressFamilies").is_empty());

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(exec[0].ends_with("/listwarden"), "{exec:?}");
    assert_eq!(exec[1], "run");
    assert!(
        exec.windows(2).any(|w| w
            == [
                "--api-key-file",
                "${CREDENTIALS_DIRECTORY}/autosend-api-key"
            ]),
        "{exec:?}"
    );
    assert!(
        exec.windows(2)
            .any(|w| w == ["--state", "/var/lib/listwarden/state.db"]),
        "the store must live in the StateDirectory: {exec:?}"
    );
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            a.replace(
                "${CREDENTIALS_DIRECTORY}",
                "/run/credentials/listwarden.service",
            )
        })
        .collect();
    assert_cli_accepts(&args);

    verify_unit("listwarden.service", &text);
}

/// systemd's own check of unit `name` (its text), with ExecStart pointing at the built
/// binary (verify wants it to exist): no warning about the unit, credentials included.
/// Skipped where systemd-analyze is not installed.
fn verify_unit(name: &str, text: &str) {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not found: skipping `systemd-analyze verify`");
        return;
    };
    if !version.status.success() {
        eprintln!("systemd-analyze does not run here: skipping `systemd-analyze verify`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(name);
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/listwarden",
            env!("CARGO_BIN_EXE_listwarden"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && !stderr.contains(&format!("{name}:"))
            && !stderr.contains("not valid"),
        "systemd-analyze verify {name}:\n{stderr}"
    );
}

/// The sample names listwarden exports, from the `# TYPE` lines of `/metrics` once every
/// family has a sample (an empty family is not described): a counter `x` is sampled as
/// `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`.
fn exported_metric_names() -> Vec<String> {
    use autosend::Observer as _;
    use listwarden::metrics::{ListLabel, Metrics, MetricsObserver, PolicyLabels, ResultLabel};
    use listwarden::reconcile::{ListOutcome, ListResult};
    let metrics = std::sync::Arc::new(Metrics::new());
    let list = listwarden::contact::ListKey::default_account(
        listwarden::contact::ContactListId::parse("list-a").unwrap(),
    );
    metrics.reconciled(&ListOutcome::new(list, ListResult::Converged), 0);
    metrics
        .drift
        .get_or_create(&ListLabel {
            account: "default".into(),
            list: "list-a".into(),
        })
        .set(1);
    metrics
        .policy_ready
        .get_or_create(&PolicyLabels {
            policy: "p".into(),
            reason: "Converged".into(),
        })
        .set(1);
    metrics
        .manifest_loads
        .get_or_create(&ResultLabel {
            result: "ok".into(),
        })
        .inc();
    metrics.webhook_event("email.bounced", "bad_signature");
    let observer = MetricsObserver {
        metrics: metrics.clone(),
        account: "default".into(),
    };
    observer.request("remove", Some(200), Duration::ZERO);
    observer.request("remove", Some(429), Duration::ZERO);
    metrics.set_pacing_wait("default", Duration::from_millis(10));
    let text = metrics.encode();
    let mut names = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => names.push(format!("{name}_total")),
            "histogram" => names.extend(["bucket", "sum", "count"].map(|s| format!("{name}_{s}"))),
            _ => names.push(name.to_string()),
        }
    }
    names
}

/// The `listwarden_*` metric names a PromQL expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("listwarden_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    found
}

#[test]
fn alert_rules_and_dashboard_queries_read_metrics_listwarden_exports() {
    let exported = exported_metric_names();
    assert!(
        exported.contains(&"listwarden_build_info".to_string()),
        "{exported:?}"
    );
    let check = |origin: &str, expr: &str| {
        let used = metrics_in(expr);
        assert!(
            !used.is_empty(),
            "{origin}: reads no listwarden metric: {expr}"
        );
        for m in used {
            assert!(
                exported.contains(&m),
                "{origin}: {m} is not exported (exported: {exported:?})"
            );
        }
    };

    let rules = documents("prometheus-rules.yaml");
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            check(name, rule["expr"].as_str().expect("expr"));
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            alerts.push(name.to_string());
        }
    }
    for wanted in [
        "ListwardenReconcileFailures",
        "ListwardenPolicyNotReady",
        "ListwardenDrift",
        "ListwardenRateLimited",
        "ListwardenNoSuccessfulSync",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "no {wanted}: {alerts:?}"
        );
    }
    let day = rules[0]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "ListwardenNoSuccessfulSync")
        .unwrap();
    assert!(day["expr"].as_str().unwrap().contains("> 86400"));

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().expect("targets") {
            check(title, target["expr"].as_str().expect("expr"));
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
}

#[test]
fn the_two_account_examples_hold_configs_listwarden_loads_and_flags_it_accepts() {
    // The sample config, as it is.
    let config = listwarden::config::load(&deploy().join("accounts.yaml"))
        .unwrap_or_else(|d| panic!("accounts.yaml: {d:?}"));
    let names: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["brand-eu", "brand-us"]);
    assert_eq!(
        config.default_account.as_ref().unwrap().as_str(),
        "brand-eu"
    );

    // The ConfigMap's config, and the patched container's args.
    let docs = documents("kubernetes-accounts.yaml");
    let map = kind(&docs, "ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts.yaml");
    std::fs::write(&path, map["data"]["accounts.yaml"].as_str().unwrap()).unwrap();
    let config = listwarden::config::load(&path).unwrap_or_else(|d| panic!("ConfigMap: {d:?}"));
    assert_eq!(config.accounts.len(), 2);
    let patch = documents("kubernetes-accounts-patch.yaml");
    assert_eq!(
        patch.len(),
        1,
        "kubectl patch --patch-file reads one document"
    );
    let container = &patch[0]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args.iter().any(|a| a.starts_with("--config=")));
    assert_cli_accepts(&args);
    // The webhook port the args listen on is opened, and the Service targets it.
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(9465));
    assert_eq!(
        kind(&docs, "Service")["spec"]["ports"][0]["targetPort"].as_str(),
        Some("webhooks")
    );

    // The systemd unit: --config from its credentials, and no key of its own; every secret
    // file the sample config names is a credential beside it (credential names cannot hold
    // a '/').
    let unit = read("listwarden-accounts.service");
    assert!(unit.contains("--config ${CREDENTIALS_DIRECTORY}/accounts.yaml"));
    assert!(!unit.contains("--api-key-file"));
    assert!(!unit.contains("LISTWARDEN_RATE_LIMIT"));
    let credentials: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert!(
        credentials.iter().all(|c| !c.contains('/')),
        "{credentials:?}"
    );
    let sample = read("accounts.yaml");
    for file in sample
        .lines()
        .filter_map(|l| l.split_once("File: ").map(|(_, v)| v))
        .map(|v| v.split_whitespace().next().unwrap())
    {
        assert!(
            credentials.contains(&file),
            "{file} is not a credential of the unit"
        );
    }
    assert!(credentials.contains(&"accounts.yaml"));
    // Hardened as the one-account unit is.
    let one = read("listwarden.service");
    for line in one
        .lines()
        .filter(|l| l.starts_with("Protect") || l.starts_with("Restrict"))
    {
        assert!(unit.lines().any(|u| u == line), "missing: {line}");
    }
    verify_unit("listwarden-accounts.service", &unit);
}
