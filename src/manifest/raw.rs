//! The shape of a `ListPolicy` document as serde reads it: every field optional, unknown fields
//! refused, so that [`super::validate`] can say what is missing or wrong, field by field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Strategy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDocument {
    pub(super) api_version: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) metadata: Option<RawMetadata>,
    pub(super) spec: Option<RawSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    pub(super) name: Option<String>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSpec {
    #[serde(default, deserialize_with = "id_string")]
    pub(super) contact_list_id: Option<String>,
    #[serde(default)]
    pub(super) suspend: bool,
    pub(super) max_removals_per_sync: Option<i64>,
    pub(super) max_forget_percent: Option<i64>,
    pub(super) strategy: Option<Strategy>,
    #[serde(default)]
    pub(super) exclude: RawExclude,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawExclude {
    #[serde(default)]
    pub(super) emails: Vec<String>,
    #[serde(default, deserialize_with = "id_strings")]
    pub(super) contact_ids: Vec<String>,
    #[serde(default)]
    pub(super) files: Vec<RawFileSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSource {
    pub(super) path: String,
    pub(super) column: Option<String>,
    #[serde(rename = "type")]
    pub(super) entry_type: Option<RawEntryType>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) enum RawEntryType {
    Email,
    ContactId,
}
