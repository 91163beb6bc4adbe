//! AutoSend webhooks end to end: `listwarden run --webhook-listen` as a process, the fake
//! AutoSend delivering signed events to it as AutoSend documents, and deliveries forged by
//! the tests (bad signatures, stale events, replays, oversize bodies, floods).

mod support;

use std::time::{Duration, SystemTime};

use autosend_fake::{BounceType, WebhookConfig, sign_webhook as sign};
use support::daemon::{Harness, L1, L2, Opts};
use support::{emails, free_port, policy};

const CONVERGE: Duration = Duration::from_secs(10);
const SECRET: &str = "whsec_test_0123456789";

/// A daemon serving webhooks on a port of its own, and the fake delivering to it.
struct Hooks {
    h: Harness,
    port: u16,
}

impl std::ops::Deref for Hooks {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl Hooks {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/autosend", self.port)
    }

    fn start(h: &mut Harness, port: u16) {
        let opts = Opts {
            extra: vec![
                "--webhook-listen".into(),
                format!("127.0.0.1:{port}"),
                "--webhook-secret-file".into(),
                h.dir.path().join("webhook.secret").display().to_string(),
            ],
            ..Opts::default()
        };
        h.start_with(opts);
    }

    /// `manifests` written, the daemon started and converged, the fake delivering webhooks.
    fn new(manifests: &[(&str, String)]) -> Hooks {
        let mut h = Harness::new();
        std::fs::write(h.dir.path().join("webhook.secret"), format!("{SECRET}\n")).unwrap();
        for (file, text) in manifests {
            h.write(file, text);
        }
        let port = free_port();
        Hooks::start(&mut h, port);
        h.wait_ready(CONVERGE);
        let hooks = Hooks { h, port };
        let mut config = WebhookConfig::new(hooks.url(), SECRET);
        config.retry_delays = vec![Duration::from_millis(200); 3];
        config.timeout = Duration::from_secs(5);
        hooks.fake().set_webhook(Some(config));
        hooks
    }

    /// POSTs `body` as AutoSend would, signed with `secret`; returns (status, body).
    fn post(&self, body: &str, secret: Option<&str>, extra: &[(&str, &str)]) -> (u16, String) {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(secret) = secret {
            headers.push(("x-webhook-signature".into(), sign(secret, body.as_bytes())));
        }
        for (k, v) in extra {
            headers.push((k.to_string(), v.to_string()));
        }
        let url = self.url();
        let body = body.to_string();
        self.env.rt.block_on(async move {
            let client = reqwest::Client::new();
            let mut req = client.post(&url).body(body);
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        })
    }

    fn accepted(&self) -> f64 {
        self.metric_sum("listwarden_webhook_events_total", &[("result", "accepted")])
    }
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn bounce_body(email: &str, created: SystemTime, bounce_type: &str) -> String {
    serde_json::json!({
        "type": "email.bounced",
        "createdAt": iso(created),
        "data": {
            "emailId": "64f1a2b3c4d5e6f7a8b9c0d1",
            "from": "sender@yourdomain.com",
            "to": {"email": email, "name": "X"},
            "subject": "Welcome",
            "test": false,
            "bounceType": bounce_type,
            "reason": "550 5.1.1"
        }
    })
    .to_string()
}

fn bounce_policy(name: &str, list: &str, events: &str) -> String {
    format!(
        "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         contactListId: {list}\n  exclude:\n    events:\n{events}"
    )
}

#[test]
fn a_re_added_excluded_contact_is_removed_again_within_seconds() {
    let excluded = emails("gone", 2);
    let hooks = Hooks::new(&[("p1.yaml", policy("p1", L1, &excluded))]);
    hooks
        .fake()
        .add_contacts(L1, &["keep@example.com".to_string()]);
    hooks.fake().add_contacts(L1, &excluded);
    hooks.wait_removed(L1, &excluded, CONVERGE);
    hooks.wait_reason("p1", "Converged", CONVERGE);
    let before = hooks.batch_count();

    // Someone adds one back: AutoSend says so (contact.updated), long before the resync.
    let readded = std::time::Instant::now();
    hooks.fake().add_contacts(L1, &excluded[..1]);
    assert!(hooks.fake().is_member(L1, &excluded[0]));
    hooks.wait("the re-added contact removed again", CONVERGE, || {
        (!hooks.fake().is_member(L1, &excluded[0])).then_some(())
    });
    eprintln!("re-added to removed: {:?}", readded.elapsed());
    assert!(hooks.fake().is_member(L1, "keep@example.com"));
    // Only that contact was sent again.
    let again: Vec<String> = hooks.ok_batches()[before..]
        .iter()
        .flat_map(|b| b.entries.clone())
        .collect();
    assert_eq!(again, vec![excluded[0].clone()]);
    assert!(hooks.accepted() >= 1.0);
}

#[test]
fn a_permanent_bounce_removes_the_recipient_from_the_lists_of_policies_that_take_bounces() {
    let hooks = Hooks::new(&[
        (
            "bounces.yaml",
            bounce_policy(
                "bounces",
                L1,
                "      - {type: email.bounced, bounceType: Permanent}\n",
            ),
        ),
        ("other.yaml", policy("other", L2, &emails("x", 1))),
    ]);
    let who = "bouncer@example.com".to_string();
    let soft = "soft@example.com".to_string();
    for list in [L1, L2] {
        hooks
            .fake()
            .add_contacts(list, &[who.clone(), soft.clone()]);
    }
    hooks
        .fake()
        .emit_bounce(&soft, BounceType::Transient)
        .unwrap();
    hooks
        .fake()
        .emit_bounce(&who, BounceType::Permanent)
        .unwrap();
    hooks.wait("the bounced recipient removed from L1", CONVERGE, || {
        (!hooks.fake().is_member(L1, &who)).then_some(())
    });
    // Only the list of the policy that takes bounces; a soft bounce is not taken.
    assert!(hooks.fake().is_member(L2, &who));
    assert!(hooks.fake().is_member(L1, &soft));
    hooks.wait("the policy's event-fed count in /status", CONVERGE, || {
        (hooks.policy_status("bounces")?["event_contacts"] == 1).then_some(())
    });

    // Exported as a file source, and forgotten by command: no longer asserted.
    let out = hooks.run(&[
        "events",
        "export",
        "--policy",
        "bounces",
        "--state",
        hooks.state().to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.lines().any(|l| l == who), "{}", out.stdout);
    let out = hooks.run(&[
        "events",
        "forget",
        &who,
        "--policy",
        "bounces",
        "--state",
        hooks.state().to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("forgot"), "{}", out.stdout);
    hooks.wait("the forget picked up", CONVERGE, || {
        (hooks.policy_status("bounces")?["event_contacts"] == 0).then_some(())
    });
}

#[test]
fn forged_stale_replayed_oversize_and_flooding_deliveries_change_nothing() {
    let hooks = Hooks::new(&[(
        "bounces.yaml",
        bounce_policy("bounces", L1, "      - {type: email.bounced}\n"),
    )]);
    // Only the test's own deliveries here.
    hooks.fake().set_webhook(None);
    let victim = "victim@example.com".to_string();
    hooks.fake().add_contacts(L1, std::slice::from_ref(&victim));
    let now = SystemTime::now();
    let body = bounce_body(&victim, now, "Permanent");

    // Wrong secret, no signature, wrong content type, wrong method.
    assert_eq!(hooks.post(&body, Some("not-the-secret"), &[]).0, 401);
    assert_eq!(hooks.post(&body, None, &[]).0, 401);
    let (status, _) = hooks.env.rt.block_on(async {
        let r = reqwest::Client::new()
            .post(hooks.url())
            .header("content-type", "text/plain")
            .header("x-webhook-signature", sign(SECRET, body.as_bytes()))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    });
    assert_eq!(status, 415);
    let get = hooks
        .env
        .rt
        .block_on(async { reqwest::get(hooks.url()).await.unwrap().status().as_u16() });
    assert_eq!(get, 405);
    // Stale (signed two hours ago) and from the future.
    let stale = bounce_body(&victim, now - Duration::from_secs(7200), "Permanent");
    assert_eq!(hooks.post(&stale, Some(SECRET), &[]).0, 400);
    let future = bounce_body(&victim, now + Duration::from_secs(3600), "Permanent");
    assert_eq!(hooks.post(&future, Some(SECRET), &[]).0, 400);
    // The header says another type than the signed body.
    let (code, _) = hooks.post(&body, Some(SECRET), &[("x-webhook-event", "email.opened")]);
    assert_eq!(code, 400);
    // Oversize, even signed.
    let big = format!(
        "{{\"type\":\"email.opened\",\"createdAt\":\"{}\",\"data\":{{\"pad\":\"{}\"}}}}",
        iso(now),
        "x".repeat(300 * 1024)
    );
    assert_eq!(hooks.post(&big, Some(SECRET), &[]).0, 413);
    // A flood of forgeries: refused, then throttled unread once an address keeps failing.
    let mut throttled = 0;
    for i in 0..200 {
        let forged = bounce_body(&format!("f{i}@example.com"), now, "Permanent");
        match hooks.post(&forged, Some("guess"), &[]).0 {
            401 => {}
            429 => throttled += 1,
            other => panic!("a forgery answered {other}"),
        }
    }
    assert!(throttled > 0, "a flood of forgeries was never throttled");
    // The throttle lasts the rest of its second.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(hooks.fake().is_member(L1, &victim), "nothing removed");
    assert_eq!(hooks.accepted(), 0.0);
    assert!(
        hooks.metric_sum(
            "listwarden_webhook_events_total",
            &[("result", "bad_signature")]
        ) >= 2.0
    );

    // The genuine one is accepted once; its replay and a retry with its delivery id are
    // recognised.
    let (code, text) = hooks.post(&body, Some(SECRET), &[("x-webhook-delivery-id", "d-1")]);
    assert_eq!((code, text.contains("accepted")), (200, true), "{text}");
    let (code, text) = hooks.post(&body, Some(SECRET), &[("x-webhook-delivery-id", "d-2")]);
    assert_eq!((code, text.contains("duplicate")), (200, true), "{text}");
    let other = bounce_body(&victim, now + Duration::from_millis(5), "Permanent");
    let (code, text) = hooks.post(&other, Some(SECRET), &[("x-webhook-delivery-id", "d-1")]);
    assert_eq!((code, text.contains("duplicate")), (200, true), "{text}");
    hooks.wait("the genuine bounce acted on", CONVERGE, || {
        (!hooks.fake().is_member(L1, &victim)).then_some(())
    });
    assert_eq!(hooks.accepted(), 1.0);
    assert!(
        !hooks.log_text().contains(SECRET),
        "the secret leaked into the log"
    );
}

#[test]
fn an_event_answered_but_not_yet_handled_survives_a_kill_and_is_handled_after_restart() {
    let mut hooks = Hooks::new(&[(
        "spam.yaml",
        bounce_policy("spam", L1, "      - {type: email.spam_reported}\n"),
    )]);
    let who = "complainer@example.com".to_string();
    hooks.fake().add_contacts(L1, std::slice::from_ref(&who));
    let body = serde_json::json!({
        "type": "email.spam_reported",
        "createdAt": iso(SystemTime::now()),
        "data": {"emailId": "e1", "from": "s@yourdomain.com", "to": {"email": who, "name": null},
                 "subject": "s", "test": false, "complaintType": "abuse"}
    })
    .to_string();
    let (code, text) = hooks.post(&body, Some(SECRET), &[]);
    assert_eq!(code, 200, "{text}");
    // Handling waits for the batch to close (a quarter of a second): kill before it does.
    hooks.h.daemon().signal("KILL");
    hooks.h.daemon().wait_exit(Duration::from_secs(5));
    hooks.h.take_daemon();
    assert!(hooks.fake().is_member(L1, &who), "handled before the kill?");

    let port = hooks.port;
    Hooks::start(&mut hooks.h, port);
    hooks.wait(
        "the committed event handled after restart",
        CONVERGE,
        || (!hooks.fake().is_member(L1, &who)).then_some(()),
    );
}

#[test]
fn run_refuses_a_webhook_listener_without_a_secret_and_never_prints_it() {
    let h = Harness::new();
    let out = h.run(&["run", "--webhook-listen", "127.0.0.1:0", "--help"]);
    assert_eq!(out.code, 0);
    let mut cmd = h.command(support::KEY);
    cmd.env_remove("AUTOSEND_WEBHOOK_SECRET")
        .args(["run", "--webhook-listen", "127.0.0.1:0"])
        .arg(h.manifests());
    let out = support::output(&mut cmd);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("AUTOSEND_WEBHOOK_SECRET"),
        "{}",
        out.stderr
    );

    let mut cmd = h.command(support::KEY);
    cmd.env("AUTOSEND_WEBHOOK_SECRET", SECRET)
        .args(["run", "--help"]);
    let out = support::output(&mut cmd);
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

/// Invariant 1: removing a policy's `events` entry stops asserting what that entry fed, even
/// when the policy keeps another entry.
#[test]
fn narrowing_the_events_filter_stops_asserting_what_the_removed_entry_fed() {
    let both = "      - {type: email.bounced}\n      - {type: email.spam_reported}\n";
    let hooks = Hooks::new(&[("p.yaml", bounce_policy("p", L1, both))]);
    let bounced = "bounced@example.com".to_string();
    let complainer = "complainer@example.com".to_string();
    hooks
        .fake()
        .add_contacts(L1, &[bounced.clone(), complainer.clone()]);
    hooks
        .fake()
        .emit_bounce(&bounced, BounceType::Permanent)
        .unwrap();
    hooks.wait("the bounced recipient removed", CONVERGE, || {
        (!hooks.fake().is_member(L1, &bounced)).then_some(())
    });

    // The bounce entry goes: the policy takes spam reports only.
    hooks.write(
        "p.yaml",
        &bounce_policy("p", L1, "      - {type: email.spam_reported}\n"),
    );
    std::thread::sleep(Duration::from_secs(2));
    // The bounced contact is added back (AutoSend says so), then a spam report arrives: once
    // the report is acted on, the contact event before it was handled too.
    hooks
        .fake()
        .add_contacts(L1, std::slice::from_ref(&bounced));
    std::thread::sleep(Duration::from_secs(1));
    hooks.fake().emit_spam_report(&complainer).unwrap();
    hooks.wait("the spam report acted on", CONVERGE, || {
        (!hooks.fake().is_member(L1, &complainer)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        hooks.fake().is_member(L1, &bounced),
        "a contact fed by an events entry the manifests no longer have was removed again"
    );
}

/// Invariant 1: a policy's event-fed contacts were fed for the list it named then; pointed at
/// another list, the policy does not carry them there.
#[test]
fn moving_a_policy_to_another_list_does_not_carry_its_event_fed_contacts_there() {
    let events = "      - {type: email.bounced}\n";
    let hooks = Hooks::new(&[("p.yaml", bounce_policy("p", L1, events))]);
    let bounced = "bounced@example.com".to_string();
    let marker = "marker@example.com".to_string();
    hooks
        .fake()
        .add_contacts(L1, std::slice::from_ref(&bounced));
    hooks
        .fake()
        .add_contacts(L2, &[bounced.clone(), marker.clone()]);
    hooks
        .fake()
        .emit_bounce(&bounced, BounceType::Permanent)
        .unwrap();
    hooks.wait("the bounced recipient removed from L1", CONVERGE, || {
        (!hooks.fake().is_member(L1, &bounced)).then_some(())
    });
    // The policy now names L2 (and one contact of its own, to see its reconcile happen).
    hooks.write(
        "p.yaml",
        &format!("{}    emails: [{marker}]\n", bounce_policy("p", L2, events)),
    );
    hooks.wait("the moved policy reconciled on L2", CONVERGE, || {
        (!hooks.fake().is_member(L2, &marker)).then_some(())
    });
    assert!(
        hooks.fake().is_member(L2, &bounced),
        "an event fed for L1 removed the contact from L2"
    );
}

/// Invariant 2: one address trickling bodies (slowloris) must not hold every delivery slot,
/// so that AutoSend's genuine deliveries are answered 503 until its retries run out.
#[test]
fn slow_bodies_from_one_address_do_not_turn_away_genuine_deliveries() {
    use tokio::io::AsyncWriteExt;
    let hooks = Hooks::new(&[(
        "bounces.yaml",
        bounce_policy("bounces", L1, "      - {type: email.bounced}\n"),
    )]);
    hooks.fake().set_webhook(None);
    let victim = "victim@example.com".to_string();
    hooks.fake().add_contacts(L1, std::slice::from_ref(&victim));
    let port = hooks.port;
    // 40 connections from 127.0.0.2, each with headers sent and one byte of a 1000-byte body.
    let held = hooks.env.rt.block_on(async move {
        let mut held = Vec::new();
        for _ in 0..40 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut s = socket
                .connect(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
            s.write_all(
                b"POST /webhooks/autosend HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        held
    });
    let body = bounce_body(&victim, SystemTime::now(), "Permanent");
    let started = std::time::Instant::now();
    let (code, text) = hooks.post(&body, Some(SECRET), &[("x-webhook-delivery-id", "d-1")]);
    eprintln!(
        "genuine delivery under slowloris: {code} in {:?}",
        started.elapsed()
    );
    assert_eq!(code, 200, "{text}");
    hooks.wait("the genuine bounce acted on", CONVERGE, || {
        (!hooks.fake().is_member(L1, &victim)).then_some(())
    });
    drop(held);
}

/// `maxRemovalsPerSync` counts event-fed additions: a bounce storm beyond it waits.
#[test]
fn a_burst_of_bounces_beyond_max_removals_waits() {
    storm(Duration::ZERO);
}

/// A storm trickles in: events 600 ms apart, each reconcile seeing one. The threshold is
/// counted over the storm window where events arrive, so the same storm waits; `approve`
/// lets it through.
#[test]
fn a_trickling_bounce_storm_beyond_max_removals_waits_for_approve() {
    let (hooks, who) = storm(Duration::from_millis(600));
    hooks.wait("the held contacts in /status", CONVERGE, || {
        (hooks.policy_status("storm")?["event_contacts_held"] == 4).then_some(())
    });
    let state = hooks.state();
    let out = hooks.run(&["approve", "storm", "--state", state.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("4 contacts fed by webhook events"),
        "{}",
        out.stdout
    );
    hooks.wait("the whole storm removed after approve", CONVERGE, || {
        who.iter()
            .all(|w| !hooks.fake().is_member(L1, w))
            .then_some(())
    });
    // The window starts again at the approval: the next bounce goes at once.
    let next = "after@example.com".to_string();
    hooks.fake().add_contacts(L1, std::slice::from_ref(&next));
    hooks
        .fake()
        .emit_bounce(&next, BounceType::Permanent)
        .unwrap();
    hooks.wait("a bounce after the approval removed", CONVERGE, || {
        (!hooks.fake().is_member(L1, &next)).then_some(())
    });
}

fn storm(gap: Duration) -> (Hooks, Vec<String>) {
    let policy = format!(
        "{}  maxRemovalsPerSync: 2\n",
        bounce_policy("storm", L1, "      - {type: email.bounced}\n")
    );
    let hooks = Hooks::new(&[("storm.yaml", policy)]);
    let who = emails("bouncer", 6);
    hooks.fake().add_contacts(L1, &who);
    std::thread::sleep(Duration::from_secs(1));
    for w in &who {
        hooks.fake().emit_bounce(w, BounceType::Permanent).unwrap();
        std::thread::sleep(gap);
    }
    hooks.wait("all six accepted", CONVERGE, || {
        (hooks.metric_sum(
            "listwarden_webhook_events_total",
            &[("type", "email.bounced"), ("result", "accepted")],
        ) >= 6.0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let removed = who
        .iter()
        .filter(|w| !hooks.fake().is_member(L1, w))
        .count();
    eprintln!("gap {gap:?}: removed {removed} of 6 with maxRemovalsPerSync 2");
    assert!(
        removed <= 2,
        "a bounce storm of 6 removed {removed} past a threshold of 2"
    );
    (hooks, who)
}

/// Invariant 2: a flood of forgeries from many addresses neither turns genuine deliveries
/// away nor slows them much. Prints what it measured.
#[test]
fn a_flood_of_forgeries_from_many_addresses_leaves_genuine_deliveries_answered() {
    let hooks = Hooks::new(&[(
        "bounces.yaml",
        bounce_policy("bounces", L1, "      - {type: email.bounced}\n"),
    )]);
    hooks.fake().set_webhook(None);
    let port = hooks.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flooders = Vec::new();
    for a in 2..34u8 {
        for _ in 0..2 {
            let (stop, sent) = (stop.clone(), sent.clone());
            flooders.push(hooks.env.rt.spawn(async move {
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, a]))
                    .build()
                    .unwrap();
                let body = bounce_body("f@example.com", SystemTime::now(), "Permanent");
                let url = format!("http://127.0.0.1:{port}/webhooks/autosend");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-webhook-signature", "00".repeat(32))
                        .body(body.clone())
                        .send()
                        .await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut latencies = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        let body = bounce_body(&format!("g{i}@example.com"), SystemTime::now(), "Permanent");
        let t = std::time::Instant::now();
        let (code, _) = hooks.post(&body, Some(SECRET), &[]);
        latencies.push(t.elapsed());
        if code != 200 {
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = hooks.env.rt.block_on(f);
    }
    latencies.sort();
    eprintln!(
        "flood: {} forgeries sent; genuine: {refused} of 30 refused, p50 {:?}, p90 {:?}, max {:?}",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        latencies[15],
        latencies[27],
        latencies[29]
    );
    assert_eq!(refused, 0, "genuine deliveries turned away under a flood");
}
