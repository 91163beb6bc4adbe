//! listwarden keeps contacts out of AutoSend contact lists, declaratively.
//!
//! Teams keep YAML `ListPolicy` manifests in git that say, per contact list, which contacts
//! must NOT be in it. listwarden turns them into calls of AutoSend's remove endpoint,
//! idempotently, and records what it did. Data flows one way, one module per step:
//!
//! - [`clock`], [`human`]: the leaves everything may use: the wall clock, and numbers and
//!   durations written for people;
//! - [`condition`]: the vocabulary of status: `Ready`, `Reason`, `Condition`;
//! - [`contact`]: validated identifiers (`Email`, `ContactId`, `ContactListId`, `PolicyName`);
//! - [`config`]: the config file: the AutoSend accounts a run serves (where each one's key
//!   and webhook secret are, its project, budget and concurrency);
//! - [`manifest`]: manifests on disk -> validated [`manifest::Policy`] values + diagnostics;
//! - [`account`]: the AutoSend accounts served (a config file's, or the one of the
//!   environment), each policy's account, and each account's client;
//! - [`hold`]: the forget threshold: a policy that loses too many contacts in one load is held
//!   until approved;
//! - [`desired`]: policies -> the desired-absent set of each list (union, with attribution);
//! - [`plan`]: desired state + the store's records -> what to assert, in which batches, at
//!   what cost;
//! - [`load`]: manifests on disk + the store's baselines and records -> a plan (the seam
//!   where planning meets the disk);
//! - [`render`]: plans as text for people and as a versioned JSON document for CI bots;
//!   [`markdown`]: plans as a pull request comment;
//! - the AutoSend client lives in its own crate, [`autosend`] (pacing, retries, typed
//!   errors; it knows nothing of listwarden);
//! - [`observe`]: reading a list's members, and choosing assert or observe per list;
//! - [`reconcile`]: a list's plan -> remove requests -> the store, batch by batch;
//! - [`gate`]: per-list send gates that stop a reconcile whose manifests changed;
//! - [`store`]: SQLite state: confirmed contacts, policy conditions, list syncs;
//! - [`status`]: the store as a report (text and JSON);
//! - [`daemon`]: `run`: a watcher and a scheduler around the same plan/reconcile path;
//! - [`metrics`]: Prometheus metrics of the daemon;
//! - [`webhook`]: AutoSend webhooks, the pure part: signature, payload, freshness;
//!
//! - [`refresh`]: `plan --refresh`, the drift read from AutoSend.
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin layer over these functions: it parses
//! flags, calls them and maps outcomes to exit codes.

pub mod account;
pub mod clock;
pub mod condition;
pub mod config;
pub mod contact;
pub mod daemon;
pub mod desired;
pub mod feed;
pub mod gate;
pub mod hold;
pub mod human;
pub mod load;
pub mod manifest;
pub mod markdown;
pub mod metrics;
pub mod observe;
pub mod parallel;
pub mod plan;
pub mod reconcile;
pub mod refresh;
pub mod render;
pub mod revision;
pub mod status;
pub mod store;
pub mod webhook;
