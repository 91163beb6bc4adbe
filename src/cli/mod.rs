//! The command line: parse flags, call the library, map the outcome to an exit code.
//!
//! Exit codes (documented in the README):
//! - 0: success (and, with `--detailed-exitcode`, nothing to do);
//! - 1: error (invalid manifests, bad flags, API refused the key, a list failed);
//! - 2: `plan --detailed-exitcode` only: there is something to do;
//! - 3: `apply`: finished, but some contacts failed (they are retried next run).
//!
//! Help is grouped under the headings below, names every environment variable where it
//! applies, and never renders an environment variable's value (`hide_env_values`): an unset
//! one would read `[env: X=]`, a set one could be a path or URL the reader should not see.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use autosend::pacing::RateLimits;
use listwarden::manifest::{self, Manifests, Strategy};
use listwarden::plan::{self, ListRecords, Plan, PlanOptions};
use listwarden::render;

mod accounts;
mod commands;
mod events;
mod generate;
mod init;

const MANIFESTS: &str = "Manifests and plan";
const API: &str = "AutoSend API";
const STATE: &str = "State store";
const DAEMON: &str = "Daemon";
const OUTPUT: &str = "Output";
const WEBHOOKS: &str = "Webhooks";

macro_rules! environment {
    () => {
        "\
Environment:
  AUTOSEND_API_KEY        the API key (or --api-key-file, env AUTOSEND_API_KEY_FILE)
  AUTOSEND_API_URL        the API base URL (--api-url), default https://api.autosend.com/v1
  AUTOSEND_PROJECT_ID     x-project-id for account-level keys (--project-id)
  LISTWARDEN_STATE        the state store (--state), default .listwarden/state.db
  LISTWARDEN_RATE_LIMIT   the key's request budget (--rate-limit), default 2/s,50/m
  LISTWARDEN_CONFIG       a config file of several AutoSend accounts (--config); with it,
                          each account's key, URL and budget come from the file
  AUTOSEND_WEBHOOK_SECRET the webhook secret, for run --webhook-listen (or
                          --webhook-secret-file, env AUTOSEND_WEBHOOK_SECRET_FILE)
  RUST_LOG                log filter, default listwarden=info,autosend=info,warn"
    };
}

macro_rules! reference {
    () => {
        "\
Manifests: the ListPolicy reference (every field and rule) is in the README, section
\"Manifest reference\": https://github.com/listwarden/listwarden#manifest-reference-apiversion-listwardendevv1-kind-listpolicy
Editors validate manifests with `listwarden schema` (JSON Schema); start a folder with
`listwarden init`."
    };
}

macro_rules! exit_validate {
    () => {
        "\
Exit codes:
  0  every manifest is valid
  1  an error: an invalid manifest, no manifests found, a bad flag"
    };
}

macro_rules! exit_plan {
    () => {
        "\
Exit codes:
  0  success (with --detailed-exitcode: nothing to do)
  1  an error: invalid manifests (the valid policies are still planned), no manifests
     found, a bad flag, an unreadable store; with --refresh, a list that could not be read
  2  with --detailed-exitcode only: there is something to do (including lists a threshold
     refuses and policies held); with --refresh, only when real drift exists"
    };
}

macro_rules! exit_apply {
    () => {
        "\
Exit codes:
  0  every list converged
  1  an error: invalid manifests (the valid policies were still applied), no manifests
     found, a bad flag, the store in use, the key refused, a list not found or a segment, a
     threshold refusal or hold, an API error after retries, a store that cannot be written
  3  finished, but some contacts failed or were not accounted for (asserted again next run)"
    };
}

macro_rules! exit_run {
    () => {
        "\
Exit codes:
  0  stopped by SIGTERM or SIGINT after finishing the request in flight
  1  could not start: a bad flag, no API key, an HTTP listener that cannot bind"
    };
}

macro_rules! exit_simple {
    () => {
        "\
Exit codes:
  0  success
  1  an error (said on stderr)"
    };
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_CHANGES: u8 = 2;
pub const EXIT_PARTIAL: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "listwarden",
    version,
    about = "Keeps contacts out of AutoSend contact lists, declaratively.",
    long_about = "Keeps contacts out of AutoSend contact lists, declaratively.\n\n\
        You write ListPolicy manifests (YAML, usually in git) that say which contacts must NOT \
        be in which contact list. `validate` checks them, `plan` shows what would be done and \
        what it costs (offline), `apply` does it once, `run` keeps doing it as a daemon, and \
        `status` reports what the last syncs did.\n\n\
        Start with: listwarden init && listwarden validate manifests/ && listwarden plan manifests/",
    after_help = concat!(environment!(), "\n\n", reference!()),
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check manifests and report every problem (exit 0 when valid, 1 on any error).
    #[command(after_help = exit_validate!())]
    Validate(ValidateArgs),
    /// Show what would be asserted, per contact list, and what it costs. Needs no API key
    /// (unless --refresh, which reads the lists).
    #[command(after_help = concat!(
        "Requests are HTTP requests to AutoSend: per list with work, one read of the list \
         (the pre-flight check) and its remove requests; retries come on top.\n\n",
        exit_plan!(),
        "\n\n",
        environment!()
    ))]
    Plan(PlanArgs),
    /// Plan, print the plan, and execute it once: converge every list, record the outcome.
    #[command(after_help = concat!(exit_apply!(), "\n\n", environment!()))]
    Apply(ApplyArgs),
    /// Report what the last syncs did, per policy and per list. Needs no API key.
    #[command(after_help = exit_simple!())]
    Status(StatusArgs),
    /// Run as a daemon: reconcile every list, then watch the manifests and keep every list
    /// converged; serves /healthz, /readyz, /metrics and /status.
    #[command(after_help = concat!(exit_run!(), "\n\n", environment!()))]
    Run(RunArgs),
    /// Approve the change a policy's forget threshold (maxForgetPercent) holds back, after
    /// checking it: the policy's current manifests are then applied as they are. Needs no
    /// lock: a running daemon picks the approval up within seconds, as does the next apply.
    #[command(after_help = exit_simple!())]
    Approve(ApproveArgs),
    /// The contacts AutoSend webhook events (bounces, spam reports) fed to policies with
    /// spec.exclude.events: export them as a file source to commit, or forget one.
    #[command(after_help = exit_simple!())]
    Events(EventsArgs),
    /// Scaffold a manifests folder: a commented sample policy, a suppression file, the
    /// editor schema line and a .gitignore for .listwarden/. Never overwrites a file.
    #[command(after_help = exit_simple!())]
    Init(InitArgs),
    /// Print the JSON Schema of a ListPolicy manifest, for editors (yaml-language-server)
    /// and CI linters.
    Schema,
    /// Print a shell completion script (see the README for where to install it).
    Completions(CompletionsArgs),
    /// Write the man pages (listwarden.1 and one per command) into a directory.
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The folder to create the manifests in (created if missing).
    #[arg(default_value = "manifests/")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing), e.g.
    /// /usr/local/share/man/man1 or ~/.local/share/man/man1.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    /// The policy's metadata.name (`listwarden status` shows which are ThresholdExceeded).
    pub policy: String,
    /// Approve only this revision of the change (the one `plan` or `status` showed you): if
    /// the export was cut further since, nothing is approved and you are told.
    #[arg(long)]
    pub revision: Option<String>,
    /// The SQLite state store written by apply / run.
    #[arg(long, default_value = listwarden::store::DEFAULT_PATH, env = "LISTWARDEN_STATE", hide_env_values = true, help_heading = STATE)]
    pub state: PathBuf,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Write a policy's event-fed contacts as a text file source (one entry a line), to
    /// commit and name in spec.exclude.files: git stays the source of truth.
    Export(ExportArgs),
    /// Take one contact out of a policy's event-fed set (it stays recorded for audit; a new
    /// event naming it adds it again).
    Forget(ForgetArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The policy's metadata.name.
    #[arg(long)]
    pub policy: String,
    /// Only contacts whose event is this recent or newer (RFC 3339, e.g.
    /// 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<std::time::SystemTime>,
    /// Export the contact ids events named instead of the email addresses.
    #[arg(long)]
    pub contact_ids: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The SQLite state store written by `run`.
    #[arg(long, default_value = listwarden::store::DEFAULT_PATH, env = "LISTWARDEN_STATE", hide_env_values = true, help_heading = STATE)]
    pub state: PathBuf,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// The email address or contact id to forget.
    pub contact: String,
    /// The policy's metadata.name.
    #[arg(long)]
    pub policy: String,
    /// The SQLite state store written by `run`.
    #[arg(long, default_value = listwarden::store::DEFAULT_PATH, env = "LISTWARDEN_STATE", hide_env_values = true, help_heading = STATE)]
    pub state: PathBuf,
}

fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| format!("{e}; write a time like 2026-11-01T00:00:00Z or 2026-11-01 00:00:00"))
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub sync: SyncArgs,
    /// Every list is re-checked this often (cheap when nothing is pending: no API call).
    #[arg(long, default_value_t = Span(listwarden::daemon::DEFAULT_INTERVAL), value_parser = parse_span, help_heading = DAEMON)]
    pub interval: Span,
    /// Address of the HTTP listener for /healthz, /readyz, /metrics and /status (an IP
    /// address and a port; 0.0.0.0:9464 for every interface, e.g. for Kubernetes probes).
    #[arg(long, default_value = listwarden::daemon::DEFAULT_LISTEN, value_parser = parse_listen, help_heading = DAEMON)]
    pub listen: std::net::SocketAddr,
    /// How long file changes are gathered before a reload (one reload per burst of edits
    /// or git checkout).
    #[arg(long, default_value_t = Span(listwarden::daemon::DEFAULT_DEBOUNCE), value_parser = parse_span, help_heading = DAEMON)]
    pub debounce: Span,
    /// Show contact addresses in /status. Off by default: the endpoint is unauthenticated
    /// and addresses are personal data, so they are masked (j***@example.com).
    #[arg(long, help_heading = DAEMON)]
    pub expose_contacts: bool,
    /// Serve AutoSend's webhooks (POST /webhooks/autosend) on this address, apart from
    /// --listen: AutoSend must reach this one (through your ingress), nobody should reach the
    /// other. Needs the webhook secret (--webhook-secret-file or AUTOSEND_WEBHOOK_SECRET).
    /// With --config, each account with a webhook secret in the file is served on
    /// /webhooks/autosend/ACCOUNT (and the default account on /webhooks/autosend too).
    #[arg(long, value_parser = parse_listen, help_heading = WEBHOOKS)]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// Read the webhook secret (AutoSend's webhook settings show it) from this file instead
    /// of the environment variable AUTOSEND_WEBHOOK_SECRET.
    #[arg(long, env = "AUTOSEND_WEBHOOK_SECRET_FILE", help_heading = WEBHOOKS)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Webhook events older than this (by their signed createdAt) are refused, and retries
    /// and replays are recognised for this long.
    #[arg(long, default_value_t = Span(listwarden::webhook::DEFAULT_WINDOW), value_parser = parse_span, help_heading = WEBHOOKS)]
    pub webhook_window: Span,
}

/// What `apply` and `run` both take: they converge lists the same way.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A manifest file or a directory of manifests (`run` watches it recursively).
    #[arg(default_value = "manifests/")]
    pub path: PathBuf,
    #[command(flatten)]
    pub flags: PlanFlags,
    #[command(flatten)]
    pub state: StateFlags,
    #[command(flatten)]
    pub api: ApiFlags,
    /// Lists reconciled at the same time. They share one request budget (--rate-limit), so
    /// more concurrency helps only when requests wait on the network, not on the budget.
    #[arg(long, default_value_t = listwarden::daemon::DEFAULT_CONCURRENCY, help_heading = API)]
    pub concurrency: usize,
    /// Log format on stderr: `text` for people, `json` for log shippers. RUST_LOG sets the
    /// filter (default listwarden=info,autosend=info,warn).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = OUTPUT)]
    pub log_format: LogFormat,
    /// Accept a manifests path that holds no manifest (by default that is an error: a wrong
    /// path in CI must not pass, and a daemon must not silently enforce nothing).
    #[arg(long, help_heading = MANIFESTS)]
    pub allow_empty: bool,
}

/// Where the state store lives and when confirmed contacts are asserted again.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = STATE)]
pub struct StateFlags {
    /// The SQLite state store (created on first apply).
    #[arg(long, default_value = listwarden::store::DEFAULT_PATH, env = "LISTWARDEN_STATE", hide_env_values = true)]
    pub state: PathBuf,
    /// Confirmed contacts are asserted again after this long, so a contact someone re-added
    /// gets removed again (e.g. 12h, 24h, 7d).
    #[arg(long, default_value_t = Span(listwarden::plan::DEFAULT_RESYNC_AFTER), value_parser = parse_span)]
    pub resync_after: Span,
}

/// How to reach AutoSend. The key comes from AUTOSEND_API_KEY or --api-key-file, and never
/// appears in help, output or logs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = API)]
pub struct ApiFlags {
    /// Read the API key from this file (e.g. a systemd credential or a mounted Secret)
    /// instead of the environment variable AUTOSEND_API_KEY.
    #[arg(long, env = "AUTOSEND_API_KEY_FILE", hide_env_values = true)]
    pub api_key_file: Option<PathBuf>,
    /// The API's base URL, with its version (a staging server, or the fake AutoSend server
    /// for tests and demos).
    /// AutoSend's own when unset.
    #[arg(long, env = "AUTOSEND_API_URL", hide_env_values = true)]
    pub api_url: Option<String>,
    /// Sent as the x-project-id header, which account-level keys (ASA_...) need.
    #[arg(long, env = "AUTOSEND_PROJECT_ID", hide_env_values = true)]
    pub project_id: Option<String>,
    /// Retries of one request after a 5xx, a timeout or a dropped connection, before the
    /// list fails (and, in the daemon, is requeued with its own backoff).
    #[arg(long, default_value_t = autosend::DEFAULT_MAX_RETRIES)]
    pub max_retries: usize,
    /// First wait of the exponential backoff between those retries (doubling, full jitter,
    /// at most 30s).
    #[arg(long, default_value_t = Span(autosend::DEFAULT_MIN_BACKOFF), value_parser = parse_span)]
    pub retry_backoff: Span,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub sync: SyncArgs,
    /// Assert every confirmed contact again now, whatever its age (corrects drift at once).
    #[arg(long, help_heading = MANIFESTS)]
    pub resync: bool,
    /// Apply even where a safety threshold (maxRemovalsPerSync / --max-removals) refuses.
    #[arg(long, help_heading = MANIFESTS)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The SQLite state store written by apply / run.
    #[arg(long, default_value = listwarden::store::DEFAULT_PATH, env = "LISTWARDEN_STATE", hide_env_values = true, help_heading = STATE)]
    pub state: PathBuf,
    /// `text` for people, `json` for tools (the same document as the daemon's /status).
    #[arg(long, value_enum, default_value_t = Output::Text, help_heading = OUTPUT)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; `RUST_LOG` overrides the level (default: info for listwarden).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("listwarden=info,autosend=info,warn"));
    // A log line that cannot be written (stderr a closed pipe: `run ... | head`) is lost:
    // the subscriber's fallback would print its error to that same stderr and panic, which
    // killed the task that waits for SIGTERM, so the daemon could not be stopped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// A manifest file, or a directory searched recursively for *.yaml / *.yml (hidden
    /// entries such as .git are skipped).
    #[arg(default_value = "manifests/")]
    pub path: PathBuf,
    /// Accept a path that holds no manifest (by default an error: a wrong path must fail).
    #[arg(long, help_heading = MANIFESTS)]
    pub allow_empty: bool,
    /// The accounts config file: `spec.account` of each policy is checked against it.
    #[arg(long, env = "LISTWARDEN_CONFIG", hide_env_values = true, help_heading = MANIFESTS)]
    pub config: Option<PathBuf>,
    /// `text` for people (one line per problem on stderr), `json` for tools and editors (a
    /// document with a `format_version` field on stdout, described in the README).
    #[arg(long, value_enum, default_value_t = Output::Text, help_heading = OUTPUT)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    /// For people.
    Text,
    /// For CI bots: a stable document with a `format_version` field.
    Json,
    /// A pull request comment: counts per list, addresses only with --verbose.
    Markdown,
}

impl PlanFlags {
    /// The accounts these flags name: the config file's, or the environment's one.
    pub fn accounts(&self, api: Option<&ApiFlags>) -> Result<accounts::Setup, String> {
        accounts::setup(self.config.as_deref(), self.rate_limit.as_ref(), api)
    }
}

/// Flags that shape a plan; shared by `plan`, `apply` and `run` so they compute the same.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = MANIFESTS)]
pub struct PlanFlags {
    /// Contacts per remove request. AutoSend documents no maximum; 500 matches bulk-add's
    /// limit. A server that refuses a batch as too large makes listwarden split it.
    #[arg(long, default_value_t = plan::DEFAULT_BATCH_SIZE, value_parser = parse_batch_size)]
    pub batch_size: usize,
    /// Request budget of the API key, shared by every request of the process, e.g.
    /// `2/s,50/m` (AutoSend's documented default, used when unset) or `10/s,300/m` if yours
    /// was raised. With --config, each account's `rateLimit` instead.
    #[arg(long, env = "LISTWARDEN_RATE_LIMIT", hide_env_values = true)]
    pub rate_limit: Option<RateLimits>,
    /// A config file declaring several AutoSend accounts (keys, projects, budgets); policies
    /// name theirs in `spec.account`. Without it, one account from AUTOSEND_API_KEY.
    #[arg(long, env = "LISTWARDEN_CONFIG", hide_env_values = true)]
    pub config: Option<PathBuf>,
    /// Default safety threshold for policies without `maxRemovalsPerSync`: a list where one
    /// policy would newly assert more contacts than this is refused.
    #[arg(long)]
    pub max_removals: Option<u64>,
    /// How to converge lists: `assert` sends every pending contact to remove; `observe` reads
    /// the list and removes only members found; `auto` picks the cheaper per list (a
    /// manifest's `spec.strategy` overrides this). `plan` without --refresh shows assert costs.
    #[arg(long, default_value = "auto")]
    pub strategy: Strategy,
    /// Default forget threshold for policies without `maxForgetPercent`: a load in which a
    /// policy loses more than this share of its contacts (a truncated export?) is held,
    /// nothing sent or forgotten for it, until `listwarden approve POLICY`.
    #[arg(long, default_value_t = listwarden::hold::DEFAULT_MAX_FORGET_PERCENT, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_forget_percent: u8,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A manifest file or a directory of manifests.
    #[arg(default_value = "manifests/")]
    pub path: PathBuf,
    #[command(flatten)]
    pub flags: PlanFlags,
    /// `text` for people, `json` for CI bots (a stable document with a `format_version`
    /// field, described in the README), `markdown` for a pull request comment.
    #[arg(long, value_enum, default_value_t = PlanOutput::Text, help_heading = OUTPUT)]
    pub output: PlanOutput,
    /// Exit 0 when there is nothing to do, 2 when there is, 1 on error (Terraform's
    /// convention). Without it, exit 0 unless there is an error.
    #[arg(long, help_heading = OUTPUT)]
    pub detailed_exitcode: bool,
    /// List every contact that would be asserted, with the policies that ask for it (in
    /// markdown too: mind where the comment is published).
    #[arg(long, short, help_heading = OUTPUT)]
    pub verbose: bool,
    /// Where the state store is: when it exists, contacts already confirmed are not planned
    /// again (until their resync is due). The plan never creates or writes it.
    #[command(flatten)]
    pub state: StateFlags,
    /// Read-only: read each list's members from AutoSend and report exactly which
    /// desired-absent contacts are present now (the drift). Needs an API key; never removes.
    #[arg(long, help_heading = API)]
    pub refresh: bool,
    #[command(flatten)]
    pub api: ApiFlags,
    /// Accept a path that holds no manifest (by default an error: a wrong path must fail).
    #[arg(long, help_heading = MANIFESTS)]
    pub allow_empty: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; a bad flag is an error, and must not read as
            // `--detailed-exitcode`'s 2 ("there is something to do").
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { EXIT_OK });
        }
    };
    let code = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => plan_command(&args),
        Command::Apply(args) => commands::apply(&args),
        Command::Status(args) => commands::status(&args),
        Command::Run(args) => commands::run(&args),
        Command::Approve(args) => commands::approve(&args),
        Command::Events(args) => events::events(&args),
        Command::Init(args) => init::init(&args.dir),
        Command::Schema => generate::schema(),
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man(&args.dir),
    };
    ExitCode::from(code)
}

/// Prints every diagnostic, one line each, to stderr.
pub fn print_diagnostics(m: &Manifests) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in &m.diagnostics {
        let _ = writeln!(err, "{d}");
    }
}

/// A manifests path that does not exist, or holds no manifest, is a mistake far more often
/// than an intent (a typo in CI, a mount that failed): said before anything is created or
/// printed, so it cannot pass for "nothing to do".
pub fn check_manifests_path(path: &std::path::Path, allow_empty: bool) -> Result<(), String> {
    if !path.exists() {
        return Err(format!(
            "manifests path {} does not exist; give a manifest file or a directory of them",
            path.display()
        ));
    }
    if !allow_empty && manifest::manifest_paths(path).is_empty() {
        return Err(format!(
            "no manifests found under {} (no *.yaml or *.yml file; hidden entries are skipped); \
             is this the right path? Pass --allow-empty if an empty set is intended",
            path.display()
        ));
    }
    Ok(())
}

fn validate(args: &ValidateArgs) -> u8 {
    if let Err(e) = check_manifests_path(&args.path, args.allow_empty) {
        eprintln!("error: {e}");
        return EXIT_ERROR;
    }
    let mut m = manifest::load(&args.path);
    // validate talks to no one: the config's own problems are diagnostics like the
    // manifests' (in the JSON document too), and policies are checked against its accounts
    // only when it loads.
    match args.config.as_deref().map(listwarden::config::load) {
        None => listwarden::account::resolve(
            &mut m,
            &listwarden::account::Accounts::single(Default::default()),
        ),
        Some(Ok(config)) => listwarden::account::resolve(
            &mut m,
            &listwarden::account::Accounts::from_config(&config),
        ),
        Some(Err(diagnostics)) => m.diagnostics.extend(diagnostics),
    }
    let errors = m.errors().count();
    if args.output == Output::Json {
        print_json(&render::validate_document(&args.path, &m));
        return if errors > 0 { EXIT_ERROR } else { EXIT_OK };
    }
    print_diagnostics(&m);
    let warnings = m.warnings().count();
    if errors > 0 {
        eprintln!(
            "{}: {errors} error(s), {warnings} warning(s); {} valid polic{}, {} invalid",
            args.path.display(),
            m.policies.len(),
            if m.policies.len() == 1 { "y" } else { "ies" },
            m.invalid.len()
        );
        EXIT_ERROR
    } else {
        println!(
            "{}: {} valid polic{} in {} file(s), {warnings} warning(s)",
            args.path.display(),
            m.policies.len(),
            if m.policies.len() == 1 { "y" } else { "ies" },
            m.files.len()
        );
        EXIT_OK
    }
}

/// Pretty JSON and a newline on stdout.
pub fn print_json(doc: &impl serde::Serialize) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = serde_json::to_writer_pretty(&mut out, doc);
    let _ = writeln!(out);
}

pub fn plan_options(flags: &PlanFlags, accounts: listwarden::account::Accounts) -> PlanOptions {
    PlanOptions {
        batch_size: flags.batch_size,
        accounts,
        max_removals: flags.max_removals,
        max_forget_percent: flags.max_forget_percent,
        strategy: flags.strategy,
        ..PlanOptions::default()
    }
}

fn plan_command(args: &PlanArgs) -> u8 {
    if let Err(e) = check_manifests_path(&args.path, args.allow_empty) {
        eprintln!("error: {e}");
        return EXIT_ERROR;
    }
    let store = match listwarden::store::Store::open_existing(&args.state.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let setup = match args.flags.accounts(args.refresh.then_some(&args.api)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    // A dry run never writes: the store's rows from before accounts are read as the default
    // account's, as `apply` will make them.
    let store = store.map(|mut s| {
        s.reading_default_rows_as(setup.accounts.adopter().cloned());
        s
    });
    if let Some(Ok(unserved)) = store
        .as_ref()
        .map(|s| listwarden::account::unserved_in_store(s, &setup.accounts))
        && !unserved.is_empty()
    {
        eprintln!(
            "warning: {}",
            listwarden::account::unserved_warning(&unserved)
        );
    }
    let mut options = plan_options(&args.flags, setup.accounts.clone());
    options.resync_after = args.state.resync_after.0;
    // An unreadable store is an error, never an empty one: that would plan every confirmed
    // contact as new.
    let baselines = match store.as_ref().map(|s| s.baselines()).transpose() {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let loaded = listwarden::load::load_and_plan(
        &args.path,
        options,
        &baselines,
        |m| match &store {
            Some(s) => listwarden::feed::join_event_contacts(m, s),
            None => Ok(()),
        },
        |list| match &store {
            Some(s) => s.records(list),
            None => Ok(ListRecords::default()),
        },
    );
    let (manifests, plan) = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    if args.refresh && args.output == PlanOutput::Markdown {
        eprintln!(
            "error: --output markdown shows the plan, not the drift; with --refresh use \
             --output text or json"
        );
        return EXIT_ERROR;
    }
    let code = if args.refresh {
        commands::refresh(args, &setup, &manifests, &plan)
    } else {
        emit_plan(args, &manifests, &plan)
    };
    leave_to_exit((manifests, plan));
    code
}

/// Leaves a command's load and plan to the operating system, which takes back a process's
/// memory at once when it exits: freeing a million addresses one by one cost 6% of a plan.
/// Only for what a command is done with right before it returns to `main`.
pub(crate) fn leave_to_exit<T>(done: T) {
    std::mem::forget(done);
}

pub fn emit_plan(args: &PlanArgs, manifests: &Manifests, plan: &Plan) -> u8 {
    match args.output {
        PlanOutput::Json => {
            print_json(&render::plan_document(
                &args.path,
                manifests,
                plan,
                args.verbose,
            ));
        }
        PlanOutput::Markdown => {
            print!(
                "{}",
                listwarden::markdown::plan_markdown(manifests, plan, args.verbose)
            );
        }
        PlanOutput::Text => {
            print_diagnostics(manifests);
            print!("{}", render::plan_text(manifests, plan, args.verbose));
        }
    }
    if manifests.has_errors() {
        if args.output == PlanOutput::Text {
            eprintln!(
                "error: {} manifest error(s): the policies concerned are left out of the plan",
                manifests.errors().count()
            );
        }
        return EXIT_ERROR;
    }
    if args.detailed_exitcode && plan.has_work() {
        return EXIT_CHANGES;
    }
    EXIT_OK
}

/// A duration on the command line: parsed by humantime (`30s`, `10m`, `24h`, `7d`), and shown
/// in `--help` in the largest whole unit, so each default is written once, in the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        if d.subsec_nanos() != 0 || secs == 0 {
            write!(f, "{}ms", d.as_millis())
        } else if secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

fn parse_span(s: &str) -> Result<Span, String> {
    parse_duration(s).map(Span)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it like 30s, 10m or 24h"))
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        let hint = if s.contains(':') {
            "give an IP address and a port, e.g. 127.0.0.1:9464 (host names are not resolved)"
        } else {
            "a port is missing: write it like 127.0.0.1:9464, or 0.0.0.0:9464 for every interface"
        };
        format!("{s:?} is not a listen address; {hint}")
    })
}

fn parse_batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a batch size; give a whole number from 1 to 10000"
        )),
    }
}
