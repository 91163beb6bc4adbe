//! The shape of a `ListPolicy` document as serde reads it: every field optional, unknown fields
//! refused, so that [`super::validate`] can say what is missing or wrong, field by field.
//!
//! The same types give the JSON Schema editors validate against (`listwarden schema`), so the
//! schema cannot drift from what the loader reads. The `schemars` attributes add the rules
//! [`super::validate`] checks that a schema can say (required fields, patterns, ranges); the
//! doc comments on fields become the editor's hover text.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::Strategy;

/// A listwarden ListPolicy: which contacts must not be in one AutoSend contact list.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "ListPolicy")]
pub(super) struct RawDocument {
    /// Always `listwarden.dev/v1`.
    #[schemars(required, extend("const" = super::API_VERSION))]
    pub(super) api_version: Option<String>,
    /// Always `ListPolicy`.
    #[schemars(required, extend("const" = super::KIND))]
    pub(super) kind: Option<String>,
    #[schemars(required)]
    pub(super) metadata: Option<RawMetadata>,
    #[schemars(required)]
    pub(super) spec: Option<RawSpec>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Metadata")]
pub(super) struct RawMetadata {
    /// Unique across every loaded manifest: lowercase letters, digits and inner dashes, at
    /// most 63 characters.
    #[schemars(
        required,
        length(max = 63),
        pattern(crate::contact::POLICY_NAME_PATTERN)
    )]
    pub(super) name: Option<String>,
    /// Free-form string labels, shown in plan JSON.
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
}

/// An id. Ids YAML did not read as strings (`contactListId: 12345`) were already replaced by
/// the text they were written as, or refused, by [`yaml::check_ids`]: only strings are left.
pub(super) struct RawId(String);

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id such as \"60d5ec49f1b2c72d9c8b4567\" (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

impl RawId {
    fn into_string(self) -> String {
        self.0
    }
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<RawId>::deserialize(d)?.map(RawId::into_string))
}

fn id_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<RawId>::deserialize(d)?
        .into_iter()
        .map(RawId::into_string)
        .collect())
}

/// What the schema says of an id: a string of the allowed characters, or a plain decimal
/// number (`contactListId: 12345` is the id "12345"). That YAML reads `0x60d5ec49` as a number
/// too, which the loader refuses, is beyond what a schema of the parsed value can see.
struct IdSchema;

impl JsonSchema for IdSchema {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "1 to 64 characters of A-Z a-z 0-9 _ -; quote it unless it is a plain decimal number",
            "anyOf": [
                {"type": "string", "pattern": crate::contact::ID_PATTERN},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

/// `spec.contactListId` is required, but serde must let a document without it through (the
/// loader reports it with the others), so the schema is told apart; and its serde default
/// (none) is no value an editor should offer.
fn require_contact_list_id(schema: &mut schemars::Schema) {
    let object = schema.ensure_object();
    if let Some(field) = object
        .get_mut("properties")
        .and_then(|p| p.get_mut("contactListId"))
        .and_then(serde_json::Value::as_object_mut)
    {
        field.remove("default");
    }
    let required = object
        .entry("required")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(list) = required.as_array_mut() {
        list.push("contactListId".into());
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Spec", transform = require_contact_list_id)]
pub(super) struct RawSpec {
    /// The AutoSend contact list the contacts must not be in. GLOBAL_CONTACT_LIST is refused:
    /// contacts leave it only through AutoSend's delete-contact API.
    #[serde(default, deserialize_with = "id_string")]
    #[schemars(
        with = "IdSchema",
        extend("not" = {"const": crate::contact::GLOBAL_CONTACT_LIST})
    )]
    pub(super) contact_list_id: Option<String>,
    /// The AutoSend account of the list, as the config file (`--config`) names it; the
    /// config's `defaultAccount` when omitted. The same list id in two accounts is two lists.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub(super) account: Option<String>,
    /// A suspended policy is loaded and planned, never applied.
    #[serde(default)]
    pub(super) suspend: bool,
    /// Safety threshold: a sync in which this policy would newly assert more contacts is
    /// refused until `apply --force`.
    #[schemars(range(min = 1))]
    pub(super) max_removals_per_sync: Option<i64>,
    /// Forget threshold (percent, default 50): a load in which this policy loses a larger
    /// share of its contacts is held until `listwarden approve`.
    #[schemars(range(min = 0, max = 100))]
    pub(super) max_forget_percent: Option<i64>,
    /// auto (the cheaper per list), assert (send every pending contact) or observe (read the
    /// list, remove the members found).
    pub(super) strategy: Option<Strategy>,
    /// The contacts that must not be in the list.
    #[serde(default)]
    pub(super) exclude: RawExclude,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Exclude")]
pub(super) struct RawExclude {
    /// Email addresses (trimmed and lowercased).
    #[serde(default)]
    pub(super) emails: Vec<String>,
    /// AutoSend contact ids.
    #[serde(default, deserialize_with = "id_strings")]
    #[schemars(with = "Vec<IdSchema>")]
    pub(super) contact_ids: Vec<String>,
    /// Files of emails or contact ids, relative to the manifest's directory.
    #[serde(default)]
    pub(super) files: Vec<RawFileSource>,
    /// AutoSend webhook events whose recipient joins this policy's contacts (received by the
    /// daemon's webhook listener), e.g. `{type: email.bounced, bounceType: Permanent}`.
    #[serde(default)]
    pub(super) events: Vec<RawEventSource>,
}

/// `bounceType` is for `email.bounced` alone: a schema rule, so editors flag it too.
fn bounce_type_only_with_bounces(schema: &mut schemars::Schema) {
    schema.insert(
        "if".into(),
        serde_json::json!({
            "required": ["type"],
            "properties": {"type": {"not": {"const": crate::webhook::event::EMAIL_BOUNCED}}}
        }),
    );
    schema.insert(
        "then".into(),
        serde_json::json!({"not": {"required": ["bounceType"]}}),
    );
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "EventSource", transform = bounce_type_only_with_bounces)]
pub(super) struct RawEventSource {
    /// email.bounced or email.spam_reported: the events that name a recipient who must not be
    /// mailed. Unsubscribe events carry no address; contact events are handled for every
    /// policy without being declared.
    #[serde(rename = "type")]
    #[schemars(
        required,
        extend("enum" = [
            crate::webhook::event::EMAIL_BOUNCED,
            crate::webhook::event::EMAIL_SPAM_REPORTED
        ])
    )]
    pub(super) event_type: Option<String>,
    /// Only with email.bounced: Permanent (hard bounces) or Transient (soft bounces), written
    /// as AutoSend writes it. Omitted: every bounce.
    #[schemars(extend("enum" = ["Permanent", "Transient", null]))]
    pub(super) bounce_type: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FileSource")]
pub(super) struct RawFileSource {
    /// Relative to the manifest's directory, inside the loaded root. Text: one entry a line,
    /// `#` comments; `.csv` or with `column`: CSV with a header row.
    pub(super) path: String,
    /// The CSV column to read (matched case-insensitively).
    pub(super) column: Option<String>,
    /// What the entries are: email (the default) or contactId.
    #[serde(rename = "type")]
    pub(super) entry_type: Option<RawEntryType>,
}

#[derive(Deserialize, Clone, Copy, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "EntryType")]
pub(super) enum RawEntryType {
    Email,
    ContactId,
}

/// The JSON Schema (draft 7, which YAML language servers read) of a `ListPolicy` document.
pub(super) fn json_schema() -> schemars::Schema {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawDocument>();
    schema.insert("$id".into(), super::SCHEMA_ID.into());
    schema
}
