//! Server text made fit to show, log and store: the key and bearer tokens redacted, control
//! characters replaced, the length capped.

/// The most bytes of one server text kept (before the ellipsis): enough for any real message,
/// and a 10 MB message can no longer fill logs, the state store and `/status`.
const MAX_SERVER_TEXT: usize = 300;

/// How a URL component percent-encodes (RFC 3986's unreserved characters are kept).
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What replaces the key, or a bearer token, in server text.
const REDACTED: &str = "[REDACTED]";

/// `https://user:pass@host/path` -> `https://host/path`.
pub(crate) fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// Makes a text that came from the server fit to show, log and store. Applied to every such
/// text (messages, codes, details, body excerpts, `Location`, per-contact errors, transport
/// errors) before it reaches an [`ApiError`]:
/// - the API key, wherever it appears, and any `Bearer <token>` become `[REDACTED]` (a server
///   echoing the request's headers must not print the key, nor store it in the state DB);
/// - control characters (newlines, escape sequences) and bidirectional overrides become
///   spaces, so that a text is one line that shows what it says;
/// - the text is cut to a few hundred bytes, at a character boundary, with an ellipsis.
///
/// Redaction comes first, so that a cut cannot leave a prefix of the key behind.
pub(crate) fn sanitise(text: &str, key: &str) -> String {
    let mut redacted = text.to_string();
    if !key.is_empty() {
        // The key as it may come back: as sent, JSON-escaped (`/` as `\/`, as PHP's
        // json_encode writes it; a body excerpt is raw JSON), or percent-encoded.
        let escaped = key.replace('/', "\\/");
        let encoded: String =
            percent_encoding::utf8_percent_encode(key, UNRESERVED_KEPT).to_string();
        for form in [key, escaped.as_str(), encoded.as_str()] {
            redacted = redacted.replace(form, REDACTED);
        }
    }
    let redacted = redact_bearer(&redacted);
    let mut out = String::with_capacity(redacted.len().min(MAX_SERVER_TEXT + 3));
    for c in redacted.chars() {
        let c = if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_SERVER_TEXT {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// `Bearer <token>` (any case, any whitespace between) -> `Bearer [REDACTED]`: the server may
/// echo a token that is not exactly our key (another key, a re-encoded one).
pub(crate) fn redact_bearer(text: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` fit `text`.
    let lower = text.to_ascii_lowercase();
    // A backslash is part of the token: a JSON-escaped token (`abc\/def`) must be redacted
    // whole, not up to its first escape.
    let ends_token = |c: char| c.is_whitespace() || "\"'`,;()<>[]{}".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("bearer") {
        let word_end = from + found + "bearer".len();
        let after = &text[word_end..];
        let gap = after.len() - after.trim_start_matches(char::is_whitespace).len();
        let quote = after[gap..]
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .map_or(0, char::len_utf8);
        let start = word_end + gap + quote;
        let len = text[start..].find(ends_token).unwrap_or(text.len() - start);
        if gap > 0 && len > 0 {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = start + len;
            from = copied;
        } else {
            from = word_end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitise_redacts_the_key_json_escaped_or_percent_encoded() {
        let key = "AS_live/9f8e7d6c5b4a";
        let body = r#"{"auth":"Bearer AS_live\/9f8e7d6c5b4a","key":"AS_live\/9f8e7d6c5b4a","q":"AS_live%2F9f8e7d6c5b4a"}"#;
        let clean = sanitise(body, key);
        assert!(!clean.contains("9f8e7d6c5b4a"), "{clean}");
        let other = sanitise(r#"{"auth":"Bearer abc\/def"}"#, "unrelated");
        assert!(!other.contains("def"), "{other}");
    }

    #[test]
    fn sanitise_redacts_the_key_and_bearer_tokens() {
        let key = "sk-live-0123456789abcdef";
        let out = sanitise(
            &format!(
                "bad key {key}; got authorization: bearer\tother.token-xyz, BEARER \"quoted\""
            ),
            key,
        );
        assert!(!out.contains(key), "{out}");
        assert!(!out.contains("other.token"), "{out}");
        assert!(!out.contains("quoted"), "{out}");
        assert_eq!(
            out,
            "bad key [REDACTED]; got authorization: bearer [REDACTED], BEARER \"[REDACTED]\""
        );
        // A key followed by a bearer pass: redacted once, not mangled.
        assert_eq!(sanitise(&format!("Bearer {key}"), key), "Bearer [REDACTED]");
        // A word merely containing "bearer" is left alone.
        assert_eq!(sanitise("the bearer-less note", ""), "the bearer-less note");
    }

    #[test]
    fn sanitise_makes_one_short_line_cut_at_a_char_boundary() {
        let out = sanitise("line one\nline\u{1b}[31m two\r\u{202e}", "k-unused");
        assert_eq!(out, "line one line [31m two");
        let long = "é".repeat(10_000);
        let out = sanitise(&long, "");
        assert!(
            out.len() <= MAX_SERVER_TEXT + '…'.len_utf8(),
            "{}",
            out.len()
        );
        assert!(out.ends_with('…'));
        // The key is redacted before the cut: no prefix of it survives at the edge.
        let key = "KEYKEYKEYKEYKEYKEYKEYKEYKEYKEY";
        let text = format!("{}{key}", "x".repeat(MAX_SERVER_TEXT - 5));
        assert!(!sanitise(&text, key).contains("KEYKE"));
    }

    #[test]
    fn userinfo_never_shows_in_a_url() {
        assert_eq!(
            without_userinfo("https://u:p@api.example.com/v1/x"),
            "https://api.example.com/v1/x"
        );
        assert_eq!(without_userinfo("http://h:1/v1"), "http://h:1/v1");
    }
}
