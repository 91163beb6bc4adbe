//! Reading one YAML document into a `serde_yaml::Value` without ever changing an id.
//!
//! YAML resolves an unquoted `0x60d5ec49` to the number 1624632393 and `+12345` to 12345, and
//! `Value` keeps only the number. An id read that way would silently name another list or
//! contact. So ids that did not come out as strings are checked against the text the author
//! wrote: only a plain decimal (`[1-9][0-9]*`) is taken, as written; anything else must be
//! quoted.
//!
//! Two reads make that exact without a YAML parser of our own:
//! 1. [`Lenient`] reads the document like `Value` does, but also takes integers beyond 64
//!    bits (a 30-digit id), which `Value` refuses and which would fail the whole file.
//! 2. Only when an id needs checking, [`source_texts`] reads the document again, guided by the
//!    first read's shape, asking serde_norway for every scalar as a string: its event
//!    deserializer then returns the scalar's text as written, unresolved, aliases followed.
//!    Merge keys (`<<`) are applied to that second tree with `Value::apply_merge` itself, so
//!    the id found at a path is exactly the one the first read put there.
//!
//! Long, on purpose: the two reads mirror each other (the second must follow the first node
//! for node, merge keys included), and read best side by side; a fifth of the file is tests.

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Number, Value};

use crate::contact::quoted;

/// A document as `serde_yaml::Value`, read by [`Lenient::deserialize`].
pub struct Lenient(pub Value);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lenient, D::Error> {
        d.deserialize_any(LenientVisitor).map(Lenient)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }

    /// `Value` cannot hold it: it becomes a float, still a number, so an id written this
    /// way is checked against its text like any other number.
    fn visit_i128<E>(self, i: i128) -> Result<Value, E> {
        Ok(Value::Number(Number::from(i as f64)))
    }

    fn visit_u128<E>(self, u: u128) -> Result<Value, E> {
        Ok(Value::Number(Number::from(u as f64)))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Lenient::deserialize(d).map(|l| l.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Lenient(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        while let Some(Lenient(key)) = map.next_key()? {
            if out.contains_key(&key) {
                // The message `Value` gives for the same mistake.
                return Err(de::Error::custom(format_args!(
                    "duplicate entry {}",
                    duplicate_key(&key)
                )));
            }
            let Lenient(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Mapping(out))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents) = data.variant_seed(TagSeed)?;
        let Lenient(value) = contents.newtype_variant()?;
        Ok(Value::Tagged(Box::new(TaggedValue { tag, value })))
    }
}

fn duplicate_key(key: &Value) -> String {
    match key {
        Value::Null => "with null key".into(),
        Value::Bool(b) => format!("with key `{b}`"),
        Value::Number(n) => format!("with key {n}"),
        Value::String(s) => format!("with key {}", quoted(s)),
        _ => "in YAML map".into(),
    }
}

struct TagSeed;

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = Tag;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tag, D::Error> {
        let tag = String::deserialize(d)?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        Ok(Tag::new(tag))
    }
}

/// Whether `doc` has a merge key (`<<`) anywhere, i.e. whether merging can change its shape.
pub fn has_merge_key(doc: &Value) -> bool {
    let mut stack = vec![doc];
    while let Some(node) = stack.pop() {
        match node {
            Value::Mapping(m) => {
                if m.contains_key("<<") {
                    return true;
                }
                stack.extend(m.values());
            }
            Value::Sequence(s) => stack.extend(s),
            Value::Tagged(t) => stack.push(&t.value),
            _ => {}
        }
    }
    false
}

/// Where an id sits in a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSlot {
    ContactListId,
    ContactId(usize),
}

impl IdSlot {
    /// The field path, as diagnostics name it.
    pub fn field(self) -> String {
        match self {
            IdSlot::ContactListId => "spec.contactListId".into(),
            IdSlot::ContactId(i) => format!("spec.exclude.contactIds[{i}]"),
        }
    }

    fn get(self, doc: &Value) -> Option<&Value> {
        let spec = doc.get("spec")?;
        match self {
            IdSlot::ContactListId => spec.get("contactListId"),
            IdSlot::ContactId(i) => spec.get("exclude")?.get("contactIds")?.get(i),
        }
    }

    fn get_mut(self, doc: &mut Value) -> Option<&mut Value> {
        let spec = doc.get_mut("spec")?;
        match self {
            IdSlot::ContactListId => spec.get_mut("contactListId"),
            IdSlot::ContactId(i) => spec.get_mut("exclude")?.get_mut("contactIds")?.get_mut(i),
        }
    }

    /// How the author would write `text` quoted, in a message.
    fn quoted_example(self, text: &str) -> String {
        match self {
            IdSlot::ContactListId => format!("contactListId: {}", quoted(text)),
            IdSlot::ContactId(_) => quoted(text),
        }
    }
}

/// Every place of a (merged) document that holds an id.
fn id_slots(doc: &Value) -> Vec<IdSlot> {
    let mut slots = vec![IdSlot::ContactListId];
    if let Some(Value::Sequence(ids)) = doc
        .get("spec")
        .and_then(|s| s.get("exclude"))
        .and_then(|e| e.get("contactIds"))
    {
        slots.extend((0..ids.len()).map(IdSlot::ContactId));
    }
    slots
}

/// Text some YAML readers take for a number although serde_norway keeps it a string: a
/// leading zero (`012345`, octal in YAML 1.1), `_` separators (`1_000`), a base prefix with
/// separators (`0x1_F`). Unquoted, its meaning depends on the tool reading the file.
fn number_like(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let based = [("0x", 16), ("0o", 8), ("0b", 2)]
        .iter()
        .find_map(|&(prefix, radix)| Some((body.strip_prefix(prefix)?, radix)));
    if let Some((digits, radix)) = based {
        return !digits.is_empty() && digits.chars().all(|c| c == '_' || c.is_digit(radix));
    }
    body.starts_with(|c: char| c.is_ascii_digit())
        && body.chars().all(|c| c.is_ascii_digit() || c == '_')
        && !plain_decimal(text)
}

/// The only unquoted non-string form an id may take: a decimal integer as people write one.
fn plain_decimal(text: &str) -> bool {
    text.starts_with(|c: char| ('1'..='9').contains(&c)) && text.bytes().all(|b| b.is_ascii_digit())
}

/// Why an id needs its text as written.
#[derive(Clone, Copy)]
enum Suspect {
    /// YAML resolved it to a number or a boolean.
    NotString,
    /// A string that is a number to other YAML readers: fine only if it was quoted.
    NumberLike,
}

fn suspect(value: &Value) -> Option<Suspect> {
    match value {
        Value::Bool(_) | Value::Number(_) => Some(Suspect::NotString),
        Value::String(s) if number_like(s) => Some(Suspect::NumberLike),
        _ => None,
    }
}

/// A scalar's text as written, and whether it was plain (unquoted).
struct SourceText {
    text: String,
    plain: bool,
}

/// Puts in place of every suspect id of the merged document `doc` (read as a number or a
/// boolean, or a number-like string) the text the author wrote, and returns a problem (field
/// path, message) for each one that is not a plain decimal or a quoted string. `source` gives
/// the document's scalars as written (see [`source_texts`]); it is called only when some id
/// is suspect, so the common case (alphanumeric ids) costs nothing.
pub fn check_ids(
    doc: &mut Value,
    source: impl FnOnce(&Value) -> Option<Value>,
) -> Vec<(String, String)> {
    let suspects: Vec<(IdSlot, Suspect)> = id_slots(doc)
        .into_iter()
        .filter_map(|slot| Some((slot, suspect(slot.get(doc)?)?)))
        .collect();
    if suspects.is_empty() {
        return Vec::new();
    }
    let written = source(doc);
    let mut problems = Vec::new();
    for (slot, why) in suspects {
        let Some(read) = slot.get(doc).cloned() else {
            continue;
        };
        let as_written = written
            .as_ref()
            .and_then(|w| slot.get(w))
            .and_then(source_text);
        let outcome = match (&as_written, why) {
            (Some(w), Suspect::NotString) if w.plain && plain_decimal(&w.text) => Ok(()),
            (Some(w), Suspect::NumberLike) if !w.plain => Ok(()),
            (Some(w), Suspect::NotString) => Err(format!(
                "{} is read by YAML as {}, not as the id {}; write it quoted: {}",
                w.text_for_message(),
                resolved(&read),
                quoted(&w.text),
                slot.quoted_example(&w.text)
            )),
            (Some(w), Suspect::NumberLike) => Err(format!(
                "{} written unquoted looks like a number, which YAML tools read differently \
                 (a leading 0 as octal, 0x as hex, '_' as a digit separator), so the id would \
                 depend on the tool reading the file; write it quoted: {}",
                w.text_for_message(),
                slot.quoted_example(&w.text)
            )),
            (None, Suspect::NotString) => Err(format!(
                "this id is read by YAML as {}, and the text it was written as cannot be \
                 checked; write it quoted, e.g. {}",
                resolved(&read),
                slot.quoted_example(&display(&read))
            )),
            (None, Suspect::NumberLike) => Err(format!(
                "{} looks like a number to some YAML tools, and whether it was quoted cannot \
                 be checked; write it quoted: {}",
                quoted(&display(&read)),
                slot.quoted_example(&display(&read))
            )),
        };
        let text = as_written.map_or_else(|| display(&read), |w| w.text);
        if let Err(message) = outcome {
            problems.push((slot.field(), message));
        }
        if let Some(v) = slot.get_mut(doc) {
            *v = Value::String(text);
        }
    }
    problems
}

impl SourceText {
    fn text_for_message(&self) -> String {
        crate::contact::clipped(&self.text).into_owned()
    }
}

fn resolved(value: &Value) -> String {
    match value {
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => "a number".into(),
        Value::Number(n) => format!("the number {n}"),
        _ => "a string".into(),
    }
}

fn display(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

const PLAIN: &str = "plain";
const QUOTED: &str = "quoted";

fn source_text(value: &Value) -> Option<SourceText> {
    match value {
        Value::Tagged(t) => match &t.value {
            Value::String(text) => Some(SourceText {
                text: text.clone(),
                plain: t.tag == Tag::new(PLAIN),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Reads `document` again, shaped like `shape` (the first read of the same document, before
/// merging), with every scalar as its source text (a `Tagged` value: tag `plain` or `quoted`
/// around the text), then applies the merge keys. `text` is what the document was parsed
/// from: it tells a quoted scalar from a plain one. `None` when the two reads disagree, which
/// they cannot for the same text; the caller then refuses the ids it wanted to check.
pub fn source_texts<'de>(
    document: impl Deserializer<'de>,
    shape: &Value,
    text: &str,
) -> Option<Value> {
    let mut written = Shaped { shape, text }.deserialize(document).ok()?;
    written.apply_merge().ok()?;
    Some(written)
}

struct Shaped<'s> {
    shape: &'s Value,
    text: &'s str,
}

impl<'de> DeserializeSeed<'de> for Shaped<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.shape {
            Value::Mapping(shape) => d.deserialize_map(ShapedMap {
                shape,
                text: self.text,
            }),
            Value::Sequence(shape) => d.deserialize_seq(ShapedSeq {
                shape,
                text: self.text,
            }),
            // serde_norway's event deserializer answers deserialize_str with the scalar's
            // text as written, for any scalar, without resolving it.
            Value::Bool(_) | Value::Number(_) | Value::String(_) => {
                d.deserialize_str(SourceTextVisitor { text: self.text })
            }
            // Nothing to learn inside: skipped whole, the first read kept.
            Value::Null | Value::Tagged(_) => {
                IgnoredAny::deserialize(d)?;
                Ok(self.shape.clone())
            }
        }
    }
}

struct ShapedMap<'s> {
    shape: &'s Mapping,
    text: &'s str,
}

impl<'de> Visitor<'de> for ShapedMap<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mapping read the first time")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        for (key, shape) in self.shape {
            if map.next_key::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("the mapping changed between two reads"));
            }
            let value = map.next_value_seed(Shaped {
                shape,
                text: self.text,
            })?;
            out.insert(key.clone(), value);
        }
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("the mapping changed between two reads"));
        }
        Ok(Value::Mapping(out))
    }
}

struct ShapedSeq<'s> {
    shape: &'s [Value],
    text: &'s str,
}

impl<'de> Visitor<'de> for ShapedSeq<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the sequence read the first time")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(self.shape.len());
        for shape in self.shape {
            let Some(value) = seq.next_element_seed(Shaped {
                shape,
                text: self.text,
            })?
            else {
                return Err(de::Error::custom("the sequence changed between two reads"));
            };
            out.push(value);
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("the sequence changed between two reads"));
        }
        Ok(Value::Sequence(out))
    }
}

struct SourceTextVisitor<'s> {
    text: &'s str,
}

impl SourceTextVisitor<'_> {
    fn tagged(plain: bool, text: &str) -> Value {
        Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(if plain { PLAIN } else { QUOTED }),
            value: Value::String(text.to_owned()),
        }))
    }
}

impl<'de> Visitor<'de> for SourceTextVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a scalar")
    }

    /// serde_norway lends the scalar straight from the source when its value is the text
    /// between its delimiters: a plain scalar's first character is then where the scalar
    /// starts, a quoted one's follows its opening quote. So the character before it tells
    /// them apart.
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value, E> {
        let start = self.text.as_ptr() as usize;
        let at = v.as_ptr() as usize;
        let quoted = at > start
            && at <= start + self.text.len()
            && matches!(self.text.as_bytes()[at - start - 1], b'"' | b'\'');
        Ok(Self::tagged(!quoted, v))
    }

    /// A value that is not a slice of the source was unescaped or folded: quoted or a block
    /// scalar, or a plain scalar over several lines (which holds a space, so no id or
    /// number).
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Self::tagged(false, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text`'s first document the way the loader does, and checks its ids.
    fn ids(text: &str) -> (Value, Vec<(String, String)>) {
        let document = serde_yaml::Deserializer::from_str(text).next().unwrap();
        let Lenient(first) = Lenient::deserialize(document).unwrap();
        let mut merged = first.clone();
        merged.apply_merge().unwrap();
        let problems = check_ids(&mut merged, |_| {
            let again = serde_yaml::Deserializer::from_str(text).next().unwrap();
            source_texts(again, &first, text)
        });
        (merged, problems)
    }

    fn list_id(doc: &Value) -> &str {
        doc["spec"]["contactListId"].as_str().unwrap()
    }

    #[test]
    fn plain_decimal_ids_of_any_length_are_taken_as_written() {
        let (doc, problems) = ids(
            "spec:\n  contactListId: 12345\n  exclude:\n    contactIds: [111, \"abc\", 123456789012345678901234567890]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(list_id(&doc), "12345");
        assert_eq!(
            doc["spec"]["exclude"]["contactIds"],
            serde_yaml::from_str::<Value>("['111', abc, '123456789012345678901234567890']")
                .unwrap()
        );
    }

    #[test]
    fn numbers_that_are_not_plain_decimals_must_be_quoted() {
        for (written, read_as) in [
            ("0x60d5ec49", "the number 1624632393"),
            ("0o777", "the number 511"),
            ("0b101", "the number 5"),
            ("+12345", "the number 12345"),
            ("-5", "the number -5"),
            ("0", "the number 0"),
            ("1.5", "a number"),
            ("1e3", "a number"),
            (".inf", "a number"),
            ("true", "the boolean true"),
            ("0x123456789012345678901234567890", "a number"),
        ] {
            let (doc, problems) = ids(&format!("spec: {{contactListId: {written}}}\n"));
            assert_eq!(problems.len(), 1, "{written}");
            let (field, message) = &problems[0];
            assert_eq!(field, "spec.contactListId");
            assert!(message.contains(read_as), "{message}");
            assert!(
                message.contains(&format!("write it quoted: contactListId: \"{written}\"")),
                "{message}"
            );
            // The slot holds the text as written, never the number.
            assert_eq!(list_id(&doc), written);
        }
    }

    #[test]
    fn number_like_strings_are_refused_unquoted_and_taken_quoted() {
        for written in ["012345", "1_000", "0x1_F", "-0123"] {
            let (_, problems) = ids(&format!("spec: {{contactListId: {written}}}\n"));
            assert_eq!(problems.len(), 1, "{written}");
            assert!(problems[0].1.contains("write it quoted"), "{problems:?}");
            for quote in ['"', '\''] {
                let (doc, problems) = ids(&format!(
                    "spec: {{contactListId: {quote}{written}{quote}}}\n"
                ));
                assert!(problems.is_empty(), "{problems:?}");
                assert_eq!(list_id(&doc), written);
            }
        }
    }

    #[test]
    fn only_digits_of_the_prefixed_base_make_an_id_number_like() {
        for text in ["012345", "1_000", "0x1_F", "0o1_7", "0b1_0", "-0123", "+1"] {
            assert!(number_like(text), "{text}");
        }
        for text in [
            "0bad", "0x", "0X1_F", "0o9", "60d5ec49", "a1_000", "12345", "1-2",
        ] {
            assert!(!number_like(text), "{text}");
        }
    }

    #[test]
    fn quoted_numbers_are_taken_as_written() {
        let (doc, problems) = ids(
            "spec:\n  contactListId: \"0x60d5ec49\"\n  exclude: {contactIds: ['+1', \"007\"]}\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(list_id(&doc), "0x60d5ec49");
        assert_eq!(doc["spec"]["exclude"]["contactIds"][1], "007");
    }

    #[test]
    fn contact_ids_are_checked_one_by_one() {
        let (_, problems) =
            ids("spec:\n  contactListId: a\n  exclude:\n    contactIds: [1, 0x10, abc, 2.5]\n");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.exclude.contactIds[1]", "spec.exclude.contactIds[3]"]
        );
        assert!(
            problems[0].1.contains("write it quoted: \"0x10\""),
            "{problems:?}"
        );
    }

    #[test]
    fn ids_through_anchors_and_merge_keys_keep_their_written_text() {
        let text = "\
defaults: &defaults {contactListId: 0x10, suspend: false}
other: &other {contactListId: 777}
ids: &ids [0o7, 42]
spec:
  <<: [*defaults, *other]
  exclude:
    contactIds: *ids
";
        let (doc, problems) = ids(text);
        // The first merge source wins: 0x10, refused with its own text.
        assert_eq!(list_id(&doc), "0x10");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.contactListId", "spec.exclude.contactIds[0]"]);
        assert_eq!(doc["spec"]["exclude"]["contactIds"][1], "42");

        // An explicit key wins over merged ones.
        let (doc, problems) =
            ids("base: &b {contactListId: 0x10}\nspec:\n  <<: *b\n  contactListId: 99\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(list_id(&doc), "99");
    }

    #[test]
    fn without_the_source_text_a_suspect_id_is_refused() {
        let mut doc: Value =
            serde_yaml::from_str("spec: {contactListId: 12345, exclude: {contactIds: ['007']}}")
                .unwrap();
        let problems = check_ids(&mut doc, |_| None);
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0]
                .1
                .contains("cannot be checked; write it quoted, e.g. contactListId: \"12345\""),
            "{problems:?}"
        );
        assert!(
            problems[1]
                .1
                .contains("cannot be checked; write it quoted: \"007\""),
            "{problems:?}"
        );
    }

    #[test]
    fn documents_without_suspect_ids_are_not_read_again() {
        let mut doc: Value = serde_yaml::from_str(
            "spec: {contactListId: 60d5ec49, exclude: {contactIds: [abc, \"a-1\"]}}",
        )
        .unwrap();
        let problems = check_ids(&mut doc, |_| panic!("read again"));
        assert!(problems.is_empty());
    }

    #[test]
    fn big_integers_anywhere_no_longer_fail_the_document() {
        let document = serde_yaml::Deserializer::from_str(
            "a: 123456789012345678901234567890\nb: -99999999999999999999999\n",
        )
        .next()
        .unwrap();
        let Lenient(v) = Lenient::deserialize(document).unwrap();
        assert!(v["a"].is_f64() && v["b"].is_f64(), "{v:?}");
    }
}
