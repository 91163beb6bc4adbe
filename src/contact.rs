//! Validated identifiers: the edge of the program turns raw strings into these once, and
//! everything inside can rely on them (an [`Email`] is always normalised, a [`ContactListId`]
//! is always a safe URL path segment, a [`PolicyName`] always follows the manifest rule).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// The virtual list that holds every contact of a project. Contacts leave it only by being
/// deleted, so the remove endpoint refuses it.
pub const GLOBAL_CONTACT_LIST: &str = "GLOBAL_CONTACT_LIST";

/// Longest list or contact id accepted. No format is promised by AutoSend (examples are
/// 24 hex characters), so the rule is "a short, safe path segment", not a fixed shape.
const MAX_ID_LEN: usize = 64;

/// The id rule of [`check_path_segment`] as a regular expression, for the JSON Schema.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The rule of [`PolicyName::parse`] (less its length, which the schema says apart) as a
/// regular expression, for the JSON Schema.
pub const POLICY_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// At most this many bytes of one piece of user input are repeated in a message. A manifest
/// or a file source can hold a value of any size (a 200 MB line, a runaway key): quoting it
/// whole would flood stderr, the JSON plan and the state store, while its start and its
/// length are enough to find it.
pub const QUOTE_MAX_BYTES: usize = 200;

/// `raw` as it is quoted in messages: `"jane@"`, or when longer than [`QUOTE_MAX_BYTES`]
/// its start cut at a character boundary, an ellipsis and the full length:
/// `"aaaa…" (209715200 bytes)`. Every message that repeats user input uses this.
pub fn quoted(raw: &str) -> String {
    if raw.len() <= QUOTE_MAX_BYTES {
        let whole = format!("{raw:?}");
        // Escapes can make the quoted form longer than the input (control characters).
        if whole.len() <= QUOTE_MAX_BYTES + 2 {
            return whole;
        }
    }
    // The quotes and the ellipsis included, at most QUOTE_MAX_BYTES + 2, like a whole value:
    // a message quoting this again (serde's) does not cut it twice.
    let budget = QUOTE_MAX_BYTES - '…'.len_utf8();
    let mut cut = String::with_capacity(QUOTE_MAX_BYTES + 8);
    cut.push('"');
    for c in raw.chars() {
        let piece = c.escape_debug();
        if cut.len() - 1 + piece.len() > budget {
            break;
        }
        cut.extend(piece);
    }
    format!("{cut}…\" ({} bytes)", raw.len())
}

/// `raw` shown as it is (a path, a policy label), or when longer than [`QUOTE_MAX_BYTES`] its
/// start cut at a character boundary, an ellipsis and the full length.
pub fn clipped(raw: &str) -> Cow<'_, str> {
    if raw.len() <= QUOTE_MAX_BYTES {
        return Cow::Borrowed(raw);
    }
    let mut end = QUOTE_MAX_BYTES;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &raw[..end], raw.len()))
}

/// A normalised email address: trimmed, lowercased, and plausible (checked by the
/// `email_address` crate, with a dot in the domain and no display text).
///
/// Shared (`Arc<str>`) because the same address is held by its policy and by the desired
/// state of its list; cloning it must not copy the text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(Arc<str>);

impl Email {
    /// Normalises and validates `raw`. The error is a sentence meant for a diagnostic.
    pub fn parse(raw: &str) -> Result<Email, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("empty email address".to_string());
        }
        // Most addresses of a million-line export are plain, and already lowercase (the fast
        // check accepts no capital): one allocation, no copy to lowercase first.
        if plainly_valid(trimmed) {
            return Ok(Email(trimmed.into()));
        }
        let normalised: String = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            trimmed.to_lowercase()
        };
        if plainly_valid(&normalised) {
            return Ok(Email(normalised.into()));
        }
        let options = email_address::Options::default()
            .with_required_tld()
            .without_display_text()
            .without_domain_literal();
        match email_address::EmailAddress::parse_with_options(&normalised, options) {
            Ok(_) => Ok(Email(normalised.into())),
            Err(e) => Err(format!(
                "{} is not a valid email address ({e}); write it as local@domain.tld",
                quoted(trimmed)
            )),
        }
    }

    /// The normalisation alone, without validation: how a remote address is compared with
    /// ours (AutoSend stores addresses lowercased).
    pub fn normalise(raw: &str) -> String {
        let trimmed = raw.trim();
        if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            trimmed.to_lowercase()
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Bytes of a plain local part, the dot aside (it has rules of its own): one table lookup a
/// byte instead of a chain of comparisons.
const PLAIN_LOCAL: [bool; 256] = byte_class(b"_%+-");
/// Bytes of a plain domain label.
const PLAIN_LABEL: [bool; 256] = byte_class(b"-");

/// Lowercase ASCII letters, digits and `extra`.
const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_lowercase() || c.is_ascii_digit();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// A fast check for the common shape of an address, accepting a strict subset of what the
/// full parser (`email_address`, with a required TLD, no display text, no domain literal)
/// accepts: lowercase ASCII, a dot-atom local part of `[a-z0-9._%+-]`, a domain of at least
/// two labels of `[a-z0-9-]` (no label starting or ending with `-`) and an alphabetic TLD.
/// Anything else goes to the full parser, so the two can only agree (a property test checks
/// it).
fn plainly_valid(s: &str) -> bool {
    // One pass over the bytes: this runs once per line of every file source.
    let b = s.as_bytes();
    let Some(at) = b.iter().position(|&c| c == b'@') else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.len() > 253 || b.len() > 254 {
        return false;
    }
    // Starting as if after a dot forbids a leading dot; a dot after a dot is "..".
    let mut prev = b'.';
    for &c in local {
        if !(PLAIN_LOCAL[c as usize] || (c == b'.' && prev != b'.')) {
            return false;
        }
        prev = c;
    }
    if prev == b'.' {
        return false;
    }
    let (mut labels, mut len, mut alphabetic, mut prev) = (0usize, 0usize, true, b'.');
    for &c in domain {
        if c == b'.' {
            if len == 0 || prev == b'-' {
                return false;
            }
            labels += 1;
            len = 0;
            alphabetic = true;
        } else if PLAIN_LABEL[c as usize] {
            if len == 0 && c == b'-' {
                return false;
            }
            len += 1;
            if len > 63 {
                return false;
            }
            alphabetic &= c.is_ascii_lowercase();
        } else {
            return false;
        }
        prev = c;
    }
    // The last label, which is the TLD.
    len >= 2 && prev != b'-' && alphabetic && labels + 1 >= 2
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

fn check_path_segment(raw: &str, what: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(format!(
            "{what} {} is {} characters long; at most {MAX_ID_LEN} are allowed",
            quoted(raw),
            raw.len()
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{what} {} contains {bad:?}; only letters, digits, '_' and '-' are allowed",
            quoted(raw)
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// An AutoSend contact id, safe to put in a request body and a URL path segment.
    ContactId,
    "contact id"
);

impl ContactId {
    pub fn parse(raw: &str) -> Result<ContactId, String> {
        let raw = raw.trim();
        check_path_segment(raw, "contact id")?;
        Ok(ContactId(raw.into()))
    }
}

id_type!(
    /// An AutoSend contact list id: it becomes a URL path segment, so only `[A-Za-z0-9_-]`.
    /// The global list is refused here, once, so no later code can send it to remove.
    ContactListId,
    "contact list id"
);

impl ContactListId {
    pub fn parse(raw: &str) -> Result<ContactListId, String> {
        check_path_segment(raw, "contact list id")?;
        if raw == GLOBAL_CONTACT_LIST {
            return Err(format!(
                "{GLOBAL_CONTACT_LIST} cannot be used: contacts leave the global list only \
                 through AutoSend's delete-contact API; name a real contact list instead"
            ));
        }
        Ok(ContactListId(raw.into()))
    }
}

id_type!(
    /// A policy's `metadata.name`: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters
    /// (the Kubernetes DNS label rule, so names fit in labels, metrics and file names).
    PolicyName,
    "policy name"
);

impl PolicyName {
    pub fn parse(raw: &str) -> Result<PolicyName, String> {
        let fix =
            "use lowercase letters, digits and '-', starting and ending with a letter or digit";
        if raw.is_empty() {
            return Err(format!("name is empty; {fix}"));
        }
        if raw.len() > 63 {
            return Err(format!(
                "name {} is {} characters long; at most 63 are allowed",
                quoted(raw),
                raw.len()
            ));
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let bytes_ok = raw.chars().all(|c| ok_char(c) || c == '-');
        let ends_ok = raw.starts_with(ok_char) && raw.ends_with(ok_char);
        if !bytes_ok || !ends_ok {
            return Err(format!(
                "name {} is not a valid policy name; {fix}",
                quoted(raw)
            ));
        }
        Ok(PolicyName(raw.into()))
    }
}

id_type!(
    /// The name of an AutoSend account (a key and, with account keys, a project) in the
    /// config file: the policy name rule, so it fits in a metrics label, a URL path segment
    /// (the account's webhook route) and a log field. Without a config file the one account
    /// is [`AccountName::DEFAULT`].
    AccountName,
    "account name"
);

impl AccountName {
    /// The account of a run without a config file, and the account rows of a store from
    /// before accounts belong to.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(raw: &str) -> Result<AccountName, String> {
        PolicyName::parse(raw)
            .map(|n| AccountName(n.0))
            .map_err(|e| e.replace("policy name", "account name"))
    }

    pub fn default_account() -> AccountName {
        AccountName(Self::DEFAULT.into())
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }
}

/// A contact list as listwarden knows it: the same list id in two accounts is two lists.
/// Ordered by account, then list id. Shown as the bare list id in the default account (so a
/// run without a config file reads as it always did), `account/list` otherwise: a list id
/// is a path segment and cannot contain `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListKey {
    pub account: AccountName,
    pub id: ContactListId,
}

impl ListKey {
    pub fn new(account: AccountName, id: ContactListId) -> ListKey {
        ListKey { account, id }
    }

    /// A list of the default account (tests, and runs without a config file).
    pub fn default_account(id: ContactListId) -> ListKey {
        ListKey::new(AccountName::default_account(), id)
    }

    /// The list id as AutoSend knows it (a URL path segment).
    pub fn as_str(&self) -> &str {
        self.id.as_str()
    }
}

impl fmt::Display for ListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.account.is_default() {
            f.write_str(self.id.as_str())
        } else {
            write!(f, "{}/{}", self.account, self.id)
        }
    }
}

/// As it is shown: JSON documents that had a list id keep one for the default account.
impl Serialize for ListKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Debug for ListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListKey({}/{})", self.account, self.id)
    }
}

/// Which kind of identifier a contact is given by. The remove endpoint takes one kind per
/// request, never both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ContactKind {
    Email,
    ContactId,
}

impl ContactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactKind::Email => "email",
            ContactKind::ContactId => "contactId",
        }
    }
}

impl fmt::Display for ContactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_values_are_quoted_short_with_their_length() {
        assert_eq!(quoted("jane@"), "\"jane@\"");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "é".repeat(1000);
        let q = quoted(&long);
        assert!(q.starts_with("\"éé"), "{q}");
        assert!(q.ends_with("é…\" (2000 bytes)"), "{q}");
        assert!(q.len() <= QUOTE_MAX_BYTES + 20, "{q}");
        // Escaping can lengthen a short value: it is cut too.
        let q = quoted(&"\u{1}".repeat(100));
        assert!(
            q.ends_with("…\" (100 bytes)") && q.len() <= QUOTE_MAX_BYTES + 20,
            "{q}"
        );
        assert_eq!(clipped("m/a.yaml"), "m/a.yaml");
        let c = clipped(&long);
        assert!(
            c.ends_with("é… (2000 bytes)") && c.len() <= QUOTE_MAX_BYTES + 20,
            "{c}"
        );
    }

    #[test]
    fn a_huge_invalid_email_is_named_by_its_start_and_length() {
        let err = Email::parse(&"a".repeat(2 << 20)).unwrap_err();
        assert!(err.len() < 512, "{} bytes", err.len());
        assert!(
            err.contains("…\" (2097152 bytes) is not a valid email address"),
            "{err}"
        );
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            Email::parse("  Jane.Doe@Example.COM \t").unwrap().as_str(),
            "jane.doe@example.com"
        );
    }

    #[test]
    fn implausible_emails_are_refused() {
        for bad in [
            "",
            "jane",
            "jane@",
            "@example.com",
            "jane@localhost",
            "Jane <jane@example.com>",
            "jane@@example.com",
            "jane doe@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ids_must_be_safe_path_segments() {
        assert!(ContactId::parse("60d5ec49f1b2c72d9c8b1111").is_ok());
        assert!(ContactId::parse("a_b-C9").is_ok());
        assert!(ContactId::parse("").is_err());
        assert!(ContactId::parse("../x").is_err());
        assert!(ContactId::parse("a/b").is_err());
        assert!(ContactId::parse(&"a".repeat(65)).is_err());
        assert!(ContactListId::parse("a%2Fb").is_err());
    }

    #[test]
    fn global_list_is_refused_with_the_delete_contact_hint() {
        let err = ContactListId::parse("GLOBAL_CONTACT_LIST").unwrap_err();
        assert!(err.contains("delete-contact"), "{err}");
    }

    #[test]
    fn policy_names_follow_the_dns_label_rule() {
        for good in ["a", "newsletter-suppressions", "a1-b2", &"a".repeat(63)] {
            assert!(PolicyName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Upper", "a_b", "a.b", &"a".repeat(64)] {
            assert!(PolicyName::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Only valid addresses are generated (dot-separated atoms, hyphenated labels, an
        /// alphabetic TLD, any case, blanks around): each must parse, to its trimmed,
        /// lowercased text, and parsing or normalising that again must change nothing.
        #[test]
        fn normalising_an_email_is_idempotent(
            local in "[A-Za-z0-9_%+-]{1,8}(\\.[A-Za-z0-9_%+-]{1,8}){0,2}",
            domain in "[A-Za-z0-9]{1,5}(-[A-Za-z0-9]{1,5})?(\\.[A-Za-z0-9]{1,5}(-[A-Za-z0-9]{1,5})?){0,2}\\.[A-Za-z]{2,5}",
            before in "[ \t]{0,3}",
            after in "[ \t]{0,3}",
        ) {
            let raw = format!("{before}{local}@{domain}{after}");
            let once = Email::parse(&raw)
                .map_err(|e| TestCaseError::fail(format!("{raw:?} was refused: {e}")))?;
            prop_assert_eq!(once.as_str(), format!("{local}@{domain}").to_ascii_lowercase());
            let twice = Email::parse(once.as_str())
                .map_err(|e| TestCaseError::fail(format!("{once:?} was refused: {e}")))?;
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(Email::normalise(once.as_str()), once.as_str());
        }

        /// The fast check never accepts what the full parser refuses.
        #[test]
        fn the_fast_check_accepts_only_what_the_full_parser_accepts(
            local in "[a-z0-9._%+-]{0,10}",
            domain in "[a-z0-9-]{0,8}(\\.[a-z0-9-]{0,8}){0,3}",
        ) {
            let raw = format!("{local}@{domain}");
            if plainly_valid(&raw) {
                let options = email_address::Options::default()
                    .with_required_tld()
                    .without_display_text()
                    .without_domain_literal();
                prop_assert!(
                    email_address::EmailAddress::parse_with_options(&raw, options).is_ok(),
                    "{} passed the fast check only", raw
                );
            }
        }
    }
}
