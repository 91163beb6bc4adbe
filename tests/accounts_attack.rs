//! Attacks on the isolation of accounts (`--config`): one account's confirmations must never
//! stand for another's, whatever the accounts are named and however the runs interleave.

mod support;

use support::accounts::{KEY_US, Two, get};
use support::{Policy, emails, write};

/// A config may declare an account named `default` (the name rows from before accounts are
/// stored under) beside another default account. What that account confirms is its own:
/// it must not be adopted by the default account at the next run, which would then believe
/// its own list of the same id already converged and send nothing to it.
#[test]
fn an_account_named_default_keeps_its_confirmations_from_the_default_account() {
    let t = Two::new();
    let shared = emails("x", 3);
    t.eu.handle().add_contacts("list-1", &shared);
    t.us.handle().add_contacts("list-1", &shared);
    // `default` is us's project; brand-eu is the default account.
    let config = t.config_named("brand-eu", "default", "brand-eu");
    t.manifest(
        "us.yaml",
        &Policy::new("us", "list-1")
            .spec("  account: default\n")
            .emails(&shared)
            .yaml(),
    );
    let run = t.apply(&config);
    run.code(0);
    assert!(shared.iter().all(|e| !t.us.handle().is_member("list-1", e)));
    assert_eq!(t.us.handle().counters().count("remove", 200), 1);

    // brand-eu now excludes the same addresses from its own list-1.
    t.manifest(
        "eu.yaml",
        &Policy::new("eu", "list-1").emails(&shared).yaml(),
    );
    assert_eq!(
        t.plan_to_assert(&config),
        3,
        "a plan reads account default's confirmations as brand-eu's"
    );
    let run = t.apply(&config);
    run.code(0);
    for e in &shared {
        assert!(
            !t.eu.handle().is_member("list-1", e),
            "{e} left in brand-eu's list-1: account default's confirmation stood for it\n{}",
            run.all()
        );
    }
    // And account default's own list was not forgotten (nothing sent to it again).
    assert_eq!(
        t.us.handle().counters().count("remove", 200),
        1,
        "{}",
        run.all()
    );
}

/// A key pasted into `apiKeyEnv` is a well-formed variable name: its account fails (no such
/// variable), and the message saying so must not repeat it, on the terminal, in the store
/// or in `status`.
#[test]
fn a_key_pasted_into_api_key_env_shows_nowhere() {
    const PASTED: &str = "AS_live9f8e7d6c5b4a3f2e1d0c";
    let t = Two::new();
    let us = emails("us", 2);
    t.us.handle().add_contacts("list-1", &us);
    t.manifest(
        "us.yaml",
        &Policy::new("us", "list-1")
            .spec("  account: brand-us\n")
            .emails(&us)
            .yaml(),
    );
    let config = t.config_with(
        "brand-eu",
        "brand-us",
        "brand-eu",
        &format!("apiKeyEnv: {PASTED}"),
    );
    let run = t.apply(&config);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("brand-us"), "{}", run.all());
    let status = t
        .command(&["status", "--state", "state.db", "--output", "json"])
        .stdout;
    let store = std::fs::read(t.path("state.db")).unwrap();
    let secret = &PASTED[3..];
    assert!(!run.all().contains(secret), "{}", run.all());
    assert!(!status.contains(secret), "{status}");
    assert!(
        !store.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the pasted key is in the store"
    );
    assert!(us.iter().all(|u| t.us.handle().is_member("list-1", u)));
}

/// An account whose key cannot be read is broken whether or not its lists have something
/// to send now: the daemon must not look ready while one account could not send anything
/// (the next bounce or manifest edit would fail), and `/readyz` names it.
#[test]
fn a_daemon_with_an_unreadable_key_is_not_ready_even_when_that_account_has_nothing_to_send() {
    let t = Two::new();
    let (eu, us) = (emails("eu", 2), emails("us", 2));
    t.eu.handle().add_contacts("list-1", &eu);
    t.us.handle().add_contacts("list-1", &us);
    t.manifest("eu.yaml", &Policy::new("eu", "list-1").emails(&eu).yaml());
    t.manifest(
        "us.yaml",
        &Policy::new("us", "list-1")
            .spec("  account: brand-us\n")
            .emails(&us)
            .yaml(),
    );
    let config = t.config();
    t.apply(&config).code(0);
    // The key's Secret is not mounted at the next start.
    std::fs::remove_file(t.path("keys/eu.key")).unwrap();
    let port = support::free_port();
    let mut child = t
        .daemon_command(&config, port, KEY_US)
        .args(["--strategy", "assert"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Wait for the first pass: /readyz stops saying so.
    let readyz = loop {
        let r = get(port, "/readyz");
        let settled = r
            .as_ref()
            .is_some_and(|(_, b)| !b.contains("first reconcile pass"));
        if settled || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let (code, body) = readyz.expect("/readyz answers");
    assert_eq!(
        code, 503,
        "ready while brand-eu's key cannot be read: {body}"
    );
    assert!(body.contains("brand-eu"), "{body}");
}

/// POSTs a bounce of `email` to the daemon's `path`, signed with `secret`.
fn post_bounce(port: u16, path: &str, secret: &str, email: &str, delivery: &str) -> u16 {
    let body = serde_json::json!({
        "type": "email.bounced",
        "createdAt": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "data": {
            "emailId": "64f1a2b3c4d5e6f7a8b9c0d1",
            "from": "sender@yourdomain.com",
            "to": {"email": email, "name": "X"},
            "subject": "Welcome",
            "test": false,
            "bounceType": "Permanent",
            "reason": "550 5.1.1"
        }
    })
    .to_string();
    let signature = autosend_fake::sign_webhook(secret, body.as_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .header("x-webhook-delivery-id", delivery)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

/// Each account's route feeds only its own policies, verified with its own secret: a
/// bounce in brand-us never removes the address from brand-eu's list of the same id, one
/// account's secret opens no other's route, and a route no account serves is refused.
#[test]
fn a_webhook_event_of_one_account_feeds_only_that_account_s_policies() {
    const EU_HOOK: &str = "whsec-eu-0a1b2c";
    const US_HOOK: &str = "whsec-us-3d4e5f";
    let t = Two::new();
    let x = "bounced@example.com".to_string();
    t.eu.handle()
        .add_contacts("list-1", std::slice::from_ref(&x));
    t.us.handle()
        .add_contacts("list-1", std::slice::from_ref(&x));
    write(&t.path("keys/eu.hook"), EU_HOOK);
    let events = "    events:\n      - {type: email.bounced}\n";
    for (name, account) in [("eu-bounces", "brand-eu"), ("us-bounces", "brand-us")] {
        t.manifest(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: {name}\n\
                 spec:\n  contactListId: list-1\n  account: {account}\n  exclude:\n{events}"
            ),
        );
    }
    let config = t.config_with(
        "brand-eu",
        "brand-us",
        "brand-eu",
        "apiKeyEnv: BRAND_US_KEY\n    webhookSecretEnv: US_HOOK",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "apiKeyFile: keys/eu.key\n",
        "apiKeyFile: keys/eu.key\n    webhookSecretFile: keys/eu.hook\n",
    );
    write(&config, &text);
    let (port, hook_port) = (support::free_port(), support::free_port());
    let mut child = t
        .daemon_command(&config, port, KEY_US)
        .env("US_HOOK", US_HOOK)
        .args(["--webhook-listen", &format!("127.0.0.1:{hook_port}")])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(port, "/readyz").is_none_or(|(c, _)| c != 200) {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let route = "/webhooks/autosend/brand-us";
    let codes = [
        // brand-eu's secret on brand-us's route.
        post_bounce(hook_port, route, EU_HOOK, &x, "d-1"),
        // A route no account serves.
        post_bounce(hook_port, "/webhooks/autosend/nobody", US_HOOK, &x, "d-2"),
        // brand-us's secret on the bare route, which serves brand-eu.
        post_bounce(hook_port, "/webhooks/autosend", US_HOOK, &x, "d-3"),
    ];
    // The real one.
    let accepted = post_bounce(hook_port, route, US_HOOK, &x, "d-4");
    let removed = loop {
        if !t.us.handle().is_member("list-1", &x) || std::time::Instant::now() > deadline {
            break !t.us.handle().is_member("list-1", &x);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    for code in codes {
        assert!((400..500).contains(&code), "refused deliveries: {codes:?}");
    }
    assert_eq!(accepted, 200);
    assert!(
        removed,
        "brand-us's bounce did not remove it from brand-us's list"
    );
    assert!(
        t.eu.handle().is_member("list-1", &x),
        "brand-us's bounce removed the address from brand-eu's list"
    );
    assert_eq!(t.eu.handle().counters().endpoint_total("remove"), 0);
}

/// The rows from before accounts are adopted once. A run without the config afterwards
/// (an old cron job, a rollback) writes rows under `default` with whatever key its
/// environment has: here brand-us's. The next run with the config must not take them as
/// the default account's, or brand-eu's list of the same id looks converged.
#[test]
fn rows_a_run_without_the_config_writes_later_are_not_adopted() {
    let t = Two::new();
    let (a, b) = (emails("a", 2), emails("b", 2));
    t.eu.handle().add_contacts("list-a", &a);
    t.eu.handle().add_contacts("list-b", &b);
    t.us.handle().add_contacts("list-b", &b);
    t.manifest("a.yaml", &Policy::new("a", "list-a").emails(&a).yaml());
    let config = t.config();
    t.apply(&config).code(0);
    // A policy on list-b, first applied by a run without the config, with brand-us's key.
    t.manifest("b.yaml", &Policy::new("b", "list-b").emails(&b).yaml());
    // list-a is not in brand-us's project: that list fails, list-b converges.
    let run = t.apply_without_config("manifests", &t.us.base_url(), KEY_US);
    assert!(
        b.iter().all(|e| !t.us.handle().is_member("list-b", e)),
        "{}",
        run.all()
    );
    // Back to the config: brand-eu's list-b still holds them, and a plan says so. list-a
    // stays confirmed: the run without the config serves no brand-eu list, so it leaves
    // brand-eu's rows alone (it forgot them before, which cost a re-send).
    assert_eq!(t.plan_to_assert(&config), b.len());
    let run = t.apply(&config);
    run.code(0);
    for e in &b {
        assert!(
            !t.eu.handle().is_member("list-b", e),
            "{e} left in brand-eu's list-b: a confirmation with brand-us's key stood for it\n{}",
            run.all()
        );
    }
}

/// A webhook secret that cannot be read fails its account's route only: the daemon starts,
/// the other account's route serves, that route answers 503 (AutoSend retries), and the
/// daemon is not ready, naming the account.
#[test]
fn an_unreadable_webhook_secret_fails_only_its_account_s_route_and_is_never_ready() {
    const US_HOOK: &str = "whsec-us-3d4e5f";
    let t = Two::new();
    let x = "bounced@example.com".to_string();
    t.us.handle()
        .add_contacts("list-1", std::slice::from_ref(&x));
    t.manifest(
        "us-bounces.yaml",
        "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: us-bounces\n\
         spec:\n  contactListId: list-1\n  account: brand-us\n  exclude:\n    events:\n      \
         - {type: email.bounced}\n",
    );
    let config = t.config_with(
        "brand-eu",
        "brand-us",
        "brand-eu",
        "apiKeyEnv: BRAND_US_KEY\n    webhookSecretEnv: US_HOOK",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "apiKeyFile: keys/eu.key\n",
        "apiKeyFile: keys/eu.key\n    webhookSecretFile: keys/not-mounted.hook\n",
    );
    write(&config, &text);
    let (port, hook_port) = (support::free_port(), support::free_port());
    let mut child = t
        .daemon_command(&config, port, KEY_US)
        .env("US_HOOK", US_HOOK)
        .args(["--webhook-listen", &format!("127.0.0.1:{hook_port}")])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let readyz = loop {
        let r = get(port, "/readyz");
        if r.as_ref()
            .is_some_and(|(_, b)| b.contains("webhook secret"))
            || std::time::Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let eu_route = post_bounce(hook_port, "/webhooks/autosend/brand-eu", "any", &x, "d-1");
    let us_route = post_bounce(hook_port, "/webhooks/autosend/brand-us", US_HOOK, &x, "d-2");
    while t.us.handle().is_member("list-1", &x) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (code, body) = readyz.expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("brand-eu"), "{body}");
    assert_eq!(eu_route, 503);
    assert_eq!(us_route, 200);
    assert!(
        !t.us.handle().is_member("list-1", &x),
        "brand-us's bounce was not acted on"
    );
}
