//! `listwarden events export|forget`: the contacts webhook events fed to a policy, handed back
//! to git (export as a text file source that can be committed) or taken out one by one
//! (forget, with an audit line). Neither needs the store's lock: like `approve`, they work
//! beside a running daemon, which picks a forget up at its next reload.

use std::io::Write as _;

use super::{EXIT_ERROR, EXIT_OK, EventsArgs, EventsCommand, ExportArgs, ForgetArgs};
use listwarden::contact::{ContactId, ContactKind, Email, PolicyName};
use listwarden::store::Store;

pub fn events(args: &EventsArgs) -> u8 {
    match &args.command {
        EventsCommand::Export(a) => export(a),
        EventsCommand::Forget(a) => forget(a),
    }
}

fn policy_name(raw: &str) -> Result<PolicyName, String> {
    PolicyName::parse(raw).map_err(|e| format!("--policy {raw:?}: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn export(args: &ExportArgs) -> u8 {
    let policy = match policy_name(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let store = match Store::open_existing(&args.state) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "error: no state store at {}: nothing was received yet (or pass --state)",
                args.state.display()
            );
            return EXIT_ERROR;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let since_ms = args.since.map_or(0, |t| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let rows = match store.event_contact_log(policy.as_str(), since_ms) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let kind = if args.contact_ids {
        ContactKind::ContactId
    } else {
        ContactKind::Email
    };
    let mut contacts: Vec<&str> = rows
        .iter()
        .filter(|(c, forgotten)| forgotten.is_none() && c.kind == kind)
        .map(|(c, _)| c.contact.as_str())
        .collect();
    contacts.sort_unstable();
    contacts.dedup();
    let mut text = format!(
        "# Contacts webhook events fed to policy {policy}, exported by `listwarden events \
         export` at {}{}.\n# {} {}; commit this file and name it in the policy's \
         spec.exclude.files{}.\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        args.since
            .map(|t| format!(", events since {}", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default(),
        contacts.len(),
        if contacts.len() == 1 {
            "entry"
        } else {
            "entries"
        },
        if args.contact_ids {
            " with type: contactId"
        } else {
            ""
        },
    );
    for c in &contacts {
        text.push_str(c);
        text.push('\n');
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => {
            if let Some(path) = &args.output {
                eprintln!(
                    "wrote {} fed by webhook events to policy {policy} to {}",
                    listwarden::human::plural(contacts.len(), "contact"),
                    path.display()
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: cannot write the export: {e}");
            EXIT_ERROR
        }
    }
}

fn forget(args: &ForgetArgs) -> u8 {
    let policy = match policy_name(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    // Written the way the events wrote it: a normalised address, or a contact id.
    let (kind, contact) = if args.contact.contains('@') {
        match Email::parse(&args.contact) {
            Ok(e) => (ContactKind::Email, e.as_str().to_string()),
            Err(e) => {
                eprintln!("error: {:?} is not an email address: {e}", args.contact);
                return EXIT_ERROR;
            }
        }
    } else {
        match ContactId::parse(&args.contact) {
            Ok(id) => (ContactKind::ContactId, id.as_str().to_string()),
            Err(e) => {
                eprintln!(
                    "error: {:?} is neither an email address nor a contact id: {e}",
                    args.contact
                );
                return EXIT_ERROR;
            }
        }
    };
    let store = match Store::open_for_approval(&args.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    match store.forget_event_contact(policy.as_str(), kind, &contact, &by, now_ms()) {
        Ok(true) => {
            println!(
                "forgot {contact} from the event-fed contacts of policy {policy} (by {by}, at \
                 {}); it stays recorded for audit. A running daemon stops asserting it at its \
                 next reload; a new event naming it adds it again",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            EXIT_OK
        }
        Ok(false) => {
            eprintln!(
                "error: policy {policy} has no event-fed contact {contact} (`listwarden events \
                 export --policy {policy}` lists them)"
            );
            EXIT_ERROR
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}
