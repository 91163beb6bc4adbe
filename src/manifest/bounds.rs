//! Limits checked before a manifest reaches the YAML parser, so that a hostile or runaway
//! file costs a bounded time to refuse.
//!
//! libyaml checks every pending simple key (one per open flow collection) at every token, so
//! its cost is quadratic in the nesting of flow collections: 200 KB of `{a: ` takes seconds
//! to reject, and a few MB would stall the daemon's reload. Manifests never need deep flow
//! nesting, so a linear pre-scan refuses it first.
//!
//! Long, on purpose: the scanner follows libyaml's own tokenizer rule by rule (comments,
//! quoted, plain and block scalars, indentation), so that no text can hide nesting from it;
//! split, the rules would no longer read against libyaml's. Its tests are the other tenth.

/// Largest manifest read. Hand-written policies are a few KB; large exclusion sets belong in
/// file sources, which are read line by line. The limit keeps one file from taking the memory
/// and the minutes that parsing it as YAML would.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// Deepest nesting of flow collections (`[...]`, `{...}`) accepted. A policy needs 2 or 3
/// (`exclude: {emails: [...]}`); the parser's cost per token grows with this depth.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where `text` nests flow collections deeper than [`MAX_FLOW_DEPTH`]: the 1-based line and
/// column (in characters, as the YAML parser counts them) of the first bracket too deep.
///
/// The scan follows libyaml's own tokenizer (unsafe-libyaml's `scanner.rs`) for everything
/// that decides whether a `[` or `{` opens a collection: comments, quoted, plain and block
/// scalars (with the indentation rules of the last two), anchors and tags. Brackets inside
/// scalars and comments are text, exactly as the parser reads them, so no valid manifest is
/// refused, and no text can hide from the scan nesting that the parser would see. Where
/// libyaml stops with a syntax error the scan stops too (`None`): the parser reports that
/// error itself, having done no more work than the scan allowed up to that point. Linear: each
/// step consumes input, and the per-token work is bounded by the depth limit.
pub fn flow_depth_exceeded(text: &str) -> Option<(usize, usize)> {
    // libyaml's reader refuses these characters before the scanner sees them.
    let end = text
        .char_indices()
        .find(|&(_, c)| !yaml_printable(c))
        .map_or(text.len(), |(i, _)| i);
    let mut scanner = Scanner {
        text: &text[..end],
        pos: 0,
        index: 0,
        line: 0,
        column: 0,
        flow: 0,
        indent: -1,
        indents: Vec::new(),
        simple_key_allowed: true,
        simple_keys: vec![SimpleKey::default()],
        stale_checked: (usize::MAX, 0),
    };
    match scanner.run() {
        Err(Stop::TooDeep { line, column }) => Some((line, column)),
        Ok(()) | Err(Stop::SyntaxError) => None,
    }
}

fn yaml_printable(c: char) -> bool {
    matches!(c as u32,
        0x09 | 0x0A | 0x0D | 0x20..=0x7E | 0x85 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

enum Stop {
    TooDeep {
        line: usize,
        column: usize,
    },
    /// libyaml refuses the text here; it stops reading too.
    SyntaxError,
}

type Step = Result<(), Stop>;

/// A token that may turn out to be a mapping key (libyaml's `yaml_simple_key_t`).
#[derive(Clone, Copy, Default)]
struct SimpleKey {
    possible: bool,
    required: bool,
    index: usize,
    line: usize,
    column: usize,
}

struct Scanner<'t> {
    text: &'t str,
    /// Byte offset of the next character.
    pos: usize,
    /// Characters read, lines and columns: 0-based, as libyaml's marks.
    index: usize,
    line: usize,
    column: usize,
    flow: usize,
    /// Indentation of the innermost block collection, -1 outside any.
    indent: isize,
    indents: Vec<isize>,
    simple_key_allowed: bool,
    /// One per flow level, plus the block level.
    simple_keys: Vec<SimpleKey>,
    /// The line of the last look for stale keys, and the index up to which none can go
    /// stale on it: looking at every level for every token would make the scan as slow as
    /// the parser it protects.
    stale_checked: (usize, usize),
}

fn is_blank(c: Option<char>) -> bool {
    matches!(c, Some(' ' | '\t'))
}

fn is_break(c: Option<char>) -> bool {
    matches!(c, Some('\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'))
}

fn is_breakz(c: Option<char>) -> bool {
    c.is_none() || is_break(c)
}

fn is_blankz(c: Option<char>) -> bool {
    is_breakz(c) || is_blank(c)
}

fn is_anchor_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_tag_char(c: char) -> bool {
    is_anchor_char(c) || ";/?:@&=+$.%!~*'()".contains(c)
}

impl Scanner<'_> {
    fn peek(&self, n: usize) -> Option<char> {
        let bytes = self.text.as_bytes();
        let mut at = self.pos;
        for _ in 0..n {
            at += match bytes.get(at) {
                Some(&b) if b < 0x80 => 1,
                Some(_) => self.text[at..].chars().next().map_or(1, char::len_utf8),
                None => return None,
            };
        }
        match bytes.get(at) {
            // Nearly all of a manifest is ASCII: no decoding for it.
            Some(&b) if b < 0x80 => Some(b as char),
            Some(_) => self.text[at..].chars().next(),
            None => None,
        }
    }

    fn at(&self, c: char) -> bool {
        self.peek(0) == Some(c)
    }

    fn skip(&mut self) {
        if let Some(c) = self.peek(0) {
            self.pos += c.len_utf8();
            self.index += 1;
            self.column += 1;
        }
    }

    fn skip_line(&mut self) {
        if self.text[self.pos..].starts_with("\r\n") {
            self.pos += 2;
            self.index += 2;
        } else if let Some(c) = self.peek(0).filter(|&c| is_break(Some(c))) {
            self.pos += c.len_utf8();
            self.index += 1;
        } else {
            return;
        }
        self.line += 1;
        self.column = 0;
    }

    fn document_marker(&self) -> bool {
        let rest = &self.text[self.pos..];
        self.column == 0
            && (rest.starts_with("---") || rest.starts_with("..."))
            && is_blankz(self.peek(3))
    }

    fn run(&mut self) -> Step {
        loop {
            self.scan_to_next_token();
            self.stale_simple_keys()?;
            self.unroll_indent(self.column as isize);
            let Some(c) = self.peek(0) else {
                return Ok(());
            };
            if self.column == 0 && c == '%' {
                // A directive: its line holds no collection.
                self.unroll_indent(-1);
                self.remove_simple_key()?;
                self.simple_key_allowed = false;
                while !is_breakz(self.peek(0)) {
                    self.skip();
                }
                continue;
            }
            if self.document_marker() {
                self.unroll_indent(-1);
                self.remove_simple_key()?;
                self.simple_key_allowed = false;
                (0..3).for_each(|_| self.skip());
                continue;
            }
            let next = self.peek(1);
            match c {
                '[' | '{' => {
                    self.save_simple_key()?;
                    self.simple_keys.push(SimpleKey::default());
                    self.flow += 1;
                    if self.flow > MAX_FLOW_DEPTH {
                        return Err(Stop::TooDeep {
                            line: self.line + 1,
                            column: self.column + 1,
                        });
                    }
                    self.simple_key_allowed = true;
                    self.skip();
                }
                ']' | '}' => {
                    self.remove_simple_key()?;
                    if self.flow > 0 {
                        self.flow -= 1;
                        self.simple_keys.pop();
                    }
                    self.simple_key_allowed = false;
                    self.skip();
                }
                ',' => {
                    self.remove_simple_key()?;
                    self.simple_key_allowed = true;
                    self.skip();
                }
                '-' if is_blankz(next) => {
                    // In a flow collection the parser refuses a block entry at once.
                    if self.flow > 0 || !self.simple_key_allowed {
                        return Err(Stop::SyntaxError);
                    }
                    self.roll_indent(self.column as isize);
                    self.remove_simple_key()?;
                    self.simple_key_allowed = true;
                    self.skip();
                }
                '?' if self.flow > 0 || is_blankz(next) => {
                    if self.flow == 0 {
                        if !self.simple_key_allowed {
                            return Err(Stop::SyntaxError);
                        }
                        self.roll_indent(self.column as isize);
                    }
                    self.remove_simple_key()?;
                    self.simple_key_allowed = self.flow == 0;
                    self.skip();
                }
                ':' if self.flow > 0 || is_blankz(next) => self.value()?,
                '*' | '&' => self.anchor()?,
                '!' => self.tag()?,
                '|' | '>' if self.flow == 0 => self.block_scalar()?,
                '\'' | '"' => self.quoted_scalar(c == '\'')?,
                _ if self.plain_start(c, next) => self.plain_scalar()?,
                _ => return Err(Stop::SyntaxError),
            }
        }
    }

    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.at('\u{feff}') {
                self.skip();
            }
            while self.at(' ') || ((self.flow > 0 || !self.simple_key_allowed) && self.at('\t')) {
                self.skip();
            }
            if self.at('#') {
                while !is_breakz(self.peek(0)) {
                    self.skip();
                }
            }
            if !is_break(self.peek(0)) {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn stale_simple_keys(&mut self) -> Step {
        let (line, index) = (self.line, self.index);
        // Keys saved since the last look are on this line and newer than every older one.
        if self.stale_checked.0 == line && index <= self.stale_checked.1 {
            return Ok(());
        }
        let mut oldest = usize::MAX;
        for key in &mut self.simple_keys {
            if key.possible && (key.line < line || key.index + 1024 < index) {
                if key.required {
                    return Err(Stop::SyntaxError);
                }
                key.possible = false;
            }
            if key.possible {
                oldest = oldest.min(key.index);
            }
        }
        self.stale_checked = (line, oldest.saturating_add(1024));
        Ok(())
    }

    fn save_simple_key(&mut self) -> Step {
        if self.simple_key_allowed {
            let required = self.flow == 0 && self.indent == self.column as isize;
            self.remove_simple_key()?;
            let key = SimpleKey {
                possible: true,
                required,
                index: self.index,
                line: self.line,
                column: self.column,
            };
            *self.simple_keys.last_mut().expect("the block level") = key;
            self.stale_checked.1 = self.stale_checked.1.min(key.index + 1024);
        }
        Ok(())
    }

    fn remove_simple_key(&mut self) -> Step {
        let key = self.simple_keys.last_mut().expect("the block level");
        if key.possible && key.required {
            return Err(Stop::SyntaxError);
        }
        key.possible = false;
        Ok(())
    }

    fn roll_indent(&mut self, column: isize) {
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
        }
    }

    fn unroll_indent(&mut self, column: isize) {
        if self.flow > 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn plain_start(&self, c: char, next: Option<char>) -> bool {
        let indicator = "-?:,[]{}#&*!|>'\"%@`".contains(c);
        !(is_blankz(Some(c)) || indicator)
            || (c == '-' && !is_blank(next))
            || (self.flow == 0 && (c == '?' || c == ':') && !is_blankz(next))
    }

    fn value(&mut self) -> Step {
        let key = *self.simple_keys.last().expect("the block level");
        if key.possible {
            self.roll_indent(key.column as isize);
            self.simple_keys
                .last_mut()
                .expect("the block level")
                .possible = false;
            self.simple_key_allowed = false;
        } else {
            if self.flow == 0 {
                if !self.simple_key_allowed {
                    return Err(Stop::SyntaxError);
                }
                self.roll_indent(self.column as isize);
            }
            self.simple_key_allowed = self.flow == 0;
        }
        self.skip();
        Ok(())
    }

    fn anchor(&mut self) -> Step {
        self.save_simple_key()?;
        self.simple_key_allowed = false;
        self.skip();
        let mut length = 0;
        while self.peek(0).is_some_and(is_anchor_char) {
            self.skip();
            length += 1;
        }
        let next = self.peek(0);
        if length == 0
            || !(is_blankz(next)
                || matches!(next, Some('?' | ':' | ',' | ']' | '}' | '%' | '@' | '`')))
        {
            return Err(Stop::SyntaxError);
        }
        Ok(())
    }

    fn tag(&mut self) -> Step {
        self.save_simple_key()?;
        self.simple_key_allowed = false;
        if self.peek(1) == Some('<') {
            self.skip();
            self.skip();
            while self
                .peek(0)
                .is_some_and(|c| is_tag_char(c) || matches!(c, ',' | '[' | ']'))
            {
                self.skip();
            }
            if !self.at('>') {
                return Err(Stop::SyntaxError);
            }
            self.skip();
        } else {
            self.skip();
            while self.peek(0).is_some_and(is_tag_char) {
                self.skip();
            }
        }
        let next = self.peek(0);
        if !is_blankz(next) && (self.flow == 0 || next != Some(',')) {
            return Err(Stop::SyntaxError);
        }
        Ok(())
    }

    fn block_scalar(&mut self) -> Step {
        self.remove_simple_key()?;
        self.simple_key_allowed = true;
        self.skip();
        let mut increment: isize = 0;
        let mut digit = |scanner: &mut Self| -> Step {
            if let Some(d) = scanner.peek(0).and_then(|c| c.to_digit(10)) {
                if d == 0 {
                    return Err(Stop::SyntaxError);
                }
                increment = d as isize;
                scanner.skip();
            }
            Ok(())
        };
        if matches!(self.peek(0), Some('+' | '-')) {
            self.skip();
            digit(self)?;
        } else {
            digit(self)?;
            if matches!(self.peek(0), Some('+' | '-')) {
                self.skip();
            }
        }
        while is_blank(self.peek(0)) {
            self.skip();
        }
        if self.at('#') {
            while !is_breakz(self.peek(0)) {
                self.skip();
            }
        }
        if !is_breakz(self.peek(0)) {
            return Err(Stop::SyntaxError);
        }
        self.skip_line();
        let mut indent = match increment {
            0 => 0,
            n if self.indent >= 0 => self.indent + n,
            n => n,
        };
        self.block_scalar_breaks(&mut indent)?;
        while self.column as isize == indent && self.peek(0).is_some() {
            while !is_breakz(self.peek(0)) {
                self.skip();
            }
            self.block_scalar_breaks(&mut indent)?;
        }
        Ok(())
    }

    /// Blank lines and the indentation of the next one; sets the content indentation when
    /// the header did not give it.
    fn block_scalar_breaks(&mut self, indent: &mut isize) -> Step {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.at(' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if (*indent == 0 || (self.column as isize) < *indent) && self.at('\t') {
                return Err(Stop::SyntaxError);
            }
            if !is_break(self.peek(0)) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        Ok(())
    }

    fn quoted_scalar(&mut self, single: bool) -> Step {
        self.save_simple_key()?;
        self.simple_key_allowed = false;
        let quote = if single { '\'' } else { '"' };
        self.skip();
        loop {
            if self.document_marker() {
                return Err(Stop::SyntaxError);
            }
            let c = self.peek(0);
            match c {
                None => return Err(Stop::SyntaxError),
                Some('\'') if single && self.peek(1) == Some('\'') => {
                    self.skip();
                    self.skip();
                }
                Some(q) if q == quote => {
                    self.skip();
                    return Ok(());
                }
                Some('\\') if !single => {
                    self.skip();
                    if is_break(self.peek(0)) {
                        self.skip_line();
                    } else {
                        self.skip();
                    }
                }
                _ if is_break(c) => self.skip_line(),
                _ => self.skip(),
            }
        }
    }

    fn plain_scalar(&mut self) -> Step {
        self.save_simple_key()?;
        self.simple_key_allowed = false;
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_marker() || self.at('#') {
                break;
            }
            while !is_blankz(self.peek(0)) {
                let c = self.peek(0);
                let next = self.peek(1);
                if self.flow > 0
                    && c == Some(':')
                    && matches!(next, Some(',' | '?' | '[' | ']' | '{' | '}'))
                {
                    return Err(Stop::SyntaxError);
                }
                if (c == Some(':') && is_blankz(next))
                    || (self.flow > 0 && matches!(c, Some(',' | '[' | ']' | '{' | '}')))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(is_blank(self.peek(0)) || is_break(self.peek(0))) {
                break;
            }
            while is_blank(self.peek(0)) || is_break(self.peek(0)) {
                if is_blank(self.peek(0)) {
                    if leading_blanks && (self.column as isize) < indent && self.at('\t') {
                        return Err(Stop::SyntaxError);
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && (self.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_just_over_the_limit_is_found_at_its_bracket() {
        let ok = format!("a: {}{}\n", "[".repeat(64), "]".repeat(64));
        assert_eq!(flow_depth_exceeded(&ok), None);
        // The 65th `{` is at column 4 + 4 * 64.
        let deep = format!("a: {}\n", "{a: ".repeat(65));
        assert_eq!(flow_depth_exceeded(&deep), Some((1, 4 + 4 * 64)));
        let over_lines = format!("x: 1\ny:\n  {}\n", "[\n".repeat(70));
        assert_eq!(flow_depth_exceeded(&over_lines), Some((67, 1)));
        let whole = "{a: ".repeat(50_000);
        assert_eq!(flow_depth_exceeded(&whole), Some((1, 1 + 4 * 64)));
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_text() {
        let many = "[{".repeat(100);
        let manifests = [
            format!("name: '{many}'\n"),
            format!("name: \"{many}\"\n"),
            format!("name: \"a \\\" {many}\"\n"),
            format!("name: 'it''s {many}'\n"),
            format!("# {many}\nname: x # {many}\n"),
            format!("emails: [\"a#{many}@example.com\"] # {many}\n"),
            format!("note: |\n  {many}\n\n  {many}\nname: x\n"),
            format!("- >-\n   {many}\n- x\n"),
            format!("name: a{many}\n"),
            format!("name: it's {many}\n"),
            format!("emails: [it's, \"{many}\"]\n"),
            format!("key: &anchor '{many}'\nother: *anchor\n"),
            format!("a: !tag \"{many}\"\n"),
            format!("spread: '{many}\n  {many}'\n"),
            format!("plain: starts here\n  and goes on '{many}\n"),
        ];
        for text in &manifests {
            assert_eq!(flow_depth_exceeded(text), None, "{text}");
        }
    }

    #[test]
    fn text_that_only_looks_like_a_scalar_does_not_hide_brackets() {
        let deep = "{a: ".repeat(65);
        // An apostrophe inside a plain scalar opens no quote, so what follows still counts;
        // a line indented like the block scalar's parent ends it.
        for text in [
            format!("a: it's\nb: {deep}\n"),
            format!("a: word\n 'x\nb: {deep}\n"),
            format!("- key: |\n  other: {deep}\n"),
            format!("a: x # '\nb: {deep}\n"),
            format!("a: \"x\"#'\nb: {deep}\n"),
        ] {
            assert!(flow_depth_exceeded(&text).is_some(), "{text}");
        }
    }

    #[test]
    fn a_real_manifest_passes() {
        let text = "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {name: a, labels: {team: \"growth #1\"}}\nspec:\n  contactListId: 60d5ec49\n  exclude:\n    emails: [jane+news@example.com, 'o''brien@example.com', o'neil@example.com]\n    files:\n      - {path: a.csv, column: email}\n";
        assert_eq!(flow_depth_exceeded(text), None);
    }
}
