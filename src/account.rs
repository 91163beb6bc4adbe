//! The AutoSend accounts one listwarden serves: which exist, which one a policy without
//! `spec.account` belongs to, each key's budget, and each account's client.
//!
//! Without a config file there is one account, [`AccountName::DEFAULT`], from the
//! environment, as there always was. With one (`--config`), the accounts it declares; a
//! policy names its account in `spec.account`, or gets the config's `defaultAccount`.
//!
//! Accounts are isolated the way lists are: a key that cannot be read, or that AutoSend
//! refuses, fails that account's lists only ([`Clients::get`] says why there is no client),
//! and each client paces and waits out 429s on its own budget, so one account's storm never
//! slows another.

use std::collections::BTreeMap;
use std::sync::Arc;

use autosend::{Client, RateLimits};

use crate::contact::{AccountName, quoted};
use crate::manifest::{Diagnostic, InvalidPolicy, Manifests};
use crate::store::{Store, StoreError};

/// One account as planning sees it: no key needed (`plan` is offline).
#[derive(Clone, Debug)]
pub struct AccountInfo {
    pub name: AccountName,
    pub rate_limits: RateLimits,
}

/// Which accounts exist, and the default one.
#[derive(Clone, Debug)]
pub struct Accounts {
    /// Sorted by name, names unique.
    accounts: Vec<AccountInfo>,
    default: Option<AccountName>,
    /// From a config file (else the one account of the environment).
    configured: bool,
}

impl Accounts {
    /// The one account of a run without a config file.
    pub fn single(rate_limits: RateLimits) -> Accounts {
        Accounts {
            accounts: vec![AccountInfo {
                name: AccountName::default_account(),
                rate_limits,
            }],
            default: Some(AccountName::default_account()),
            configured: false,
        }
    }

    /// The accounts of a config file; `default` must be one of them (the config's loader
    /// checks it).
    pub fn configured(mut accounts: Vec<AccountInfo>, default: Option<AccountName>) -> Accounts {
        accounts.sort_by(|a, b| a.name.cmp(&b.name));
        Accounts {
            accounts,
            default,
            configured: true,
        }
    }

    /// The accounts a config file declares, each with its budget (the default budget when
    /// it sets none).
    pub fn from_config(config: &crate::config::Config) -> Accounts {
        Accounts::configured(
            config
                .accounts
                .iter()
                .map(|a| AccountInfo {
                    name: a.name.clone(),
                    rate_limits: a.rate_limits.clone().unwrap_or_default(),
                })
                .collect(),
            config.default_account.clone(),
        )
    }

    pub fn is_configured(&self) -> bool {
        self.configured
    }

    pub fn get(&self, name: &AccountName) -> Option<&AccountInfo> {
        self.accounts
            .binary_search_by(|a| a.name.cmp(name))
            .ok()
            .map(|i| &self.accounts[i])
    }

    pub fn default_account(&self) -> Option<&AccountName> {
        self.default.as_ref()
    }

    /// The budget shown for the run as a whole: the one account's, or the default one's.
    pub fn default_rate_limits(&self) -> RateLimits {
        self.default
            .as_ref()
            .map(|a| self.rate_limits(a))
            .unwrap_or_default()
    }

    /// The account that adopts the store's rows from before accounts (stored under
    /// [`AccountName::DEFAULT`]): the config's default account. None without a config (they
    /// are already the one account's), and none when the config declares an account named
    /// `default`: rows stored under that name are then that account's own, written with its
    /// key, and giving them to another account would make its list of the same id look
    /// converged.
    pub fn adopter(&self) -> Option<&AccountName> {
        if !self.configured || self.get(&AccountName::default_account()).is_some() {
            return None;
        }
        self.default.as_ref().filter(|a| !a.is_default())
    }

    /// The budget of `account`'s key (the default budget for an account not declared, which
    /// resolution has already refused).
    pub fn rate_limits(&self, account: &AccountName) -> RateLimits {
        self.get(account)
            .map(|a| a.rate_limits.clone())
            .unwrap_or_default()
    }

    /// The account a policy belongs to, from its `spec.account` as written.
    pub fn resolve(&self, written: Option<&AccountName>) -> Result<AccountName, String> {
        let names = || {
            self.accounts
                .iter()
                .map(|a| quoted(a.name.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match written {
            Some(name) if self.get(name).is_some() => Ok(name.clone()),
            Some(name) if !self.configured => Err(format!(
                "account {} is not declared: without a config file there is one account, \
                 {}, from AUTOSEND_API_KEY; pass --config FILE declaring {0}, or remove \
                 spec.account",
                quoted(name.as_str()),
                quoted(AccountName::DEFAULT),
            )),
            Some(name) => Err(format!(
                "account {} is not declared in the config file; it declares {}{}",
                quoted(name.as_str()),
                names(),
                crate::human::closest(name.as_str(), self.accounts.iter().map(|a| a.name.as_str()))
                    .map(|s| format!(" (did you mean {}?)", quoted(s)))
                    .unwrap_or_default(),
            )),
            None => self.default.clone().ok_or_else(|| {
                format!(
                    "no account: the config file declares several ({}) and no defaultAccount; \
                     add spec.account, or defaultAccount to the config",
                    names()
                )
            }),
        }
    }
}

/// Settles each policy's account: `spec.account`, or the default account. A policy whose
/// account is not declared is invalid (an error naming `spec.account`), like any other
/// broken field: it fails alone and nothing is sent for it.
pub fn resolve(manifests: &mut Manifests, accounts: &Accounts) {
    let mut kept = Vec::with_capacity(manifests.policies.len());
    for mut p in std::mem::take(&mut manifests.policies) {
        match accounts.resolve(p.spec_account.as_ref()) {
            Ok(account) => {
                p.list.account = account;
                kept.push(p);
            }
            Err(message) => {
                let d = Diagnostic::error(&p.origin.file, message)
                    .in_document(p.origin.document, Some(p.name.as_str()))
                    .field("spec.account");
                manifests.invalid.push(InvalidPolicy {
                    name: Some(p.name.to_string()),
                    contact_list_id: Some(p.list.id.to_string()),
                    origin: p.origin.clone(),
                    reason: d.to_string(),
                });
                manifests.diagnostics.push(d);
            }
        }
    }
    manifests.policies = kept;
    manifests.accounts = Some(accounts.accounts.iter().map(|a| a.name.clone()).collect());
}

/// With a config file, gives the store's rows from before accounts to the default account
/// ([`Store::adopt_default_rows`]), and says so once: they were written with the one key of
/// the environment, which the default account stands for. `apply` and `run` call it right
/// after opening the store for writing, before any plan.
pub fn adopt_default_rows(store: &Store, accounts: &Accounts) -> Result<(), StoreError> {
    let Some(default) = accounts.adopter() else {
        return Ok(());
    };
    let lists = store.adopt_default_rows(default)?;
    if lists > 0 {
        tracing::info!(
            account = %default,
            lists,
            "the state store's lists from before accounts now belong to the default account"
        );
    }
    Ok(())
}

/// The accounts the store holds lists of that `accounts` does not serve, say a run without
/// the config file on a store of several accounts. Their rows are left as they are (see
/// [`Manifests::accounts`]); the caller says so, as the likely cause is a missing `--config`.
/// The rows from before accounts, which the default account is about to adopt, are not
/// counted.
pub fn unserved_in_store(store: &Store, accounts: &Accounts) -> Result<Vec<String>, StoreError> {
    let adopting = accounts.adopter().is_some();
    Ok(store
        .list_accounts()?
        .into_iter()
        .filter(|a| !(adopting && a == AccountName::DEFAULT))
        .filter(|a| AccountName::parse(a).map_or(true, |n| accounts.get(&n).is_none()))
        .collect())
}

/// The warning for [`unserved_in_store`]'s accounts.
pub fn unserved_warning(unserved: &[String]) -> String {
    format!(
        "the state store holds lists of account(s) {} that this run does not serve (is \
         --config missing?): they are left as they are, neither asserted nor forgotten",
        unserved.join(", ")
    )
}

/// Lists reconciled at once over every account: each account's own bound keeps one
/// account from taking every slot, this one bounds the process.
pub const MAX_TOTAL_CONCURRENCY: usize = 64;

/// Each account's client, or why it has none (its key could not be read), and how many of
/// its lists may run at once: shared by every reconcile of a run.
#[derive(Clone, Default)]
pub struct Clients {
    clients: Arc<BTreeMap<AccountName, Result<Client, String>>>,
    concurrency: Arc<BTreeMap<AccountName, usize>>,
}

impl Clients {
    pub fn new(clients: BTreeMap<AccountName, Result<Client, String>>) -> Clients {
        Clients {
            clients: Arc::new(clients),
            concurrency: Arc::default(),
        }
    }

    /// Per-account bounds on lists at once (the config's `concurrency`).
    pub fn with_concurrency(mut self, concurrency: BTreeMap<AccountName, usize>) -> Clients {
        self.concurrency = Arc::new(concurrency);
        self
    }

    /// How many of `account`'s lists may run at once: its own bound, else `default`.
    pub fn concurrency(&self, account: &AccountName, default: usize) -> usize {
        self.concurrency
            .get(account)
            .copied()
            .unwrap_or(default)
            .max(1)
    }

    /// The one client of a run without a config file.
    pub fn single(client: Client) -> Clients {
        Clients::new(BTreeMap::from([(
            AccountName::default_account(),
            Ok(client),
        )]))
    }

    /// The client of `account`, or why there is none (a message naming the account, never
    /// a key).
    pub fn get(&self, account: &AccountName) -> Result<&Client, String> {
        match self.clients.get(account) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("account {account} has no client")),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&AccountName, &Result<Client, String>)> {
        self.clients.iter()
    }

    /// The same clients, each transformed (a cancellation token of a pass, say).
    pub fn map(&self, mut f: impl FnMut(&AccountName, Client) -> Client) -> Clients {
        Clients {
            clients: Arc::new(
                self.clients
                    .iter()
                    .map(|(name, c)| (name.clone(), c.clone().map(|c| f(name, c))))
                    .collect(),
            ),
            concurrency: self.concurrency.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> AccountName {
        AccountName::parse(s).unwrap()
    }

    fn two(default: Option<&str>) -> Accounts {
        Accounts::configured(
            ["brand-us", "brand-eu"]
                .iter()
                .map(|n| AccountInfo {
                    name: name(n),
                    rate_limits: RateLimits::default(),
                })
                .collect(),
            default.map(name),
        )
    }

    #[test]
    fn a_policy_without_an_account_gets_the_default_one() {
        assert_eq!(
            two(Some("brand-eu")).resolve(None).unwrap(),
            name("brand-eu")
        );
        assert_eq!(
            Accounts::single(RateLimits::default())
                .resolve(None)
                .unwrap(),
            name("default")
        );
    }

    #[test]
    fn an_undeclared_account_is_refused_with_the_declared_ones_and_a_suggestion() {
        let e = two(Some("brand-eu"))
            .resolve(Some(&name("brand-uss")))
            .unwrap_err();
        assert!(e.contains("\"brand-eu\", \"brand-us\""), "{e}");
        assert!(e.contains("did you mean \"brand-us\""), "{e}");
        let e = Accounts::single(RateLimits::default())
            .resolve(Some(&name("brand-eu")))
            .unwrap_err();
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn only_a_config_without_an_account_named_default_adopts_the_rows_from_before() {
        assert_eq!(two(Some("brand-eu")).adopter(), Some(&name("brand-eu")));
        assert_eq!(two(None).adopter(), None);
        assert_eq!(Accounts::single(RateLimits::default()).adopter(), None);
        // An account named `default`: the rows under that name are its own, whichever
        // account is the default.
        let with_default = |default: &str| {
            Accounts::configured(
                ["brand-eu", "default"]
                    .iter()
                    .map(|n| AccountInfo {
                        name: name(n),
                        rate_limits: RateLimits::default(),
                    })
                    .collect(),
                Some(name(default)),
            )
        };
        assert_eq!(with_default("brand-eu").adopter(), None);
        assert_eq!(with_default("default").adopter(), None);
    }

    #[test]
    fn several_accounts_without_a_default_need_spec_account() {
        let e = two(None).resolve(None).unwrap_err();
        assert!(e.contains("defaultAccount"), "{e}");
        assert_eq!(
            two(None).resolve(Some(&name("brand-us"))).unwrap(),
            name("brand-us")
        );
    }
}
