//! Numbers and durations written for people: `1,234,567`, `2 contacts`, `1m 40s`. A leaf:
//! plans, summaries, status and messages all write them the same way.

use std::time::Duration;

/// `1 contact`, `2 contacts`, `1,000 contacts`.
pub fn plural(n: usize, noun: &str) -> String {
    format!("{} {noun}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// `1 policy`, `2 policies`.
pub fn policies(n: usize) -> String {
    format!("{} polic{}", thousands(n), if n == 1 { "y" } else { "ies" })
}

/// `1234567` -> `1,234,567`: plans are read by people comparing large counts.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        return format!("{:.1}s", d.as_secs_f64());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The candidate a person most likely meant by `word` (a typo of it: swapped, doubled or
/// dropped letters, a wrong case), for "did you mean" hints; `None` when none is close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.to_ascii_lowercase()), c))
        // 0.8 catches the typos above; unrelated words of the same length score lower.
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn durations_read_as_seconds_then_as_human_units() {
        assert_eq!(duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(duration(Duration::from_secs(100)), "1m 40s");
        assert_eq!(plural(1, "contact"), "1 contact");
        assert_eq!(plural(2000, "contact"), "2,000 contacts");
        assert_eq!(policies(1), "1 policy");
        assert_eq!(policies(3), "3 policies");
    }
}
