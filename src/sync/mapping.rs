//! Field values between the two sides of a flow: read a rule's path from a record, put it in
//! that side's comparable form, translate it to the other side, and encode it for a write.
//!
//! Each side's "own form" is what echo suppression compares: rich text as plain text, datetimes
//! as epoch milliseconds, everything else as the JSON the vendor shows. A value is translated
//! through the rule's value map (left → right) or its reverse (right → left).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::adf;
use crate::config::{ConnectorKind, Direction, FieldRule, FlowSettings, SideSettings, Transform};

/// One side of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    /// This side of `flow`.
    pub fn of(self, flow: &FlowSettings) -> &SideSettings {
        match self {
            Side::Left => &flow.left,
            Side::Right => &flow.right,
        }
    }

    /// Whether `direction` carries this side's changes to the other side.
    pub fn feeds(self, direction: Direction) -> bool {
        match self {
            Side::Left => direction.writes_right(),
            Side::Right => direction.writes_left(),
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// The rule's path on this side.
    pub fn path(self, rule: &FieldRule) -> &str {
        match self {
            Side::Left => &rule.left,
            Side::Right => &rule.right,
        }
    }
}

/// The value at a dotted path (`priority.name`, `Account.Name`); `None` when the record as
/// observed does not carry it (a partial snapshot), `Some(Null)` when it is empty.
pub fn get_path<'a>(fields: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = fields.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Value::Object(map) => map.get(part)?,
            // An empty parent (`priority: null`) makes every child empty, not missing.
            Value::Null => return Some(&Value::Null),
            _ => return None,
        };
    }
    Some(value)
}

/// The fields to ask a vendor for so that `paths` can be read from the answer: Jira paths
/// reach into a field's JSON (`priority.name` → `priority`); Salesforce dotted paths are
/// relationship fields selected as they are (`Account.Name`).
pub fn fields_for<'a>(
    kind: ConnectorKind,
    paths: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut fields: Vec<String> = paths
        .into_iter()
        .map(|path| match kind {
            ConnectorKind::Jira => path.split('.').next().unwrap_or(path).to_string(),
            ConnectorKind::Salesforce => path.to_string(),
        })
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// Set a dotted path, creating the objects on the way (`status.name` → `{"status":{"name":…}}`).
pub fn set_path(fields: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut map = fields;
    for part in parts {
        let entry = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        map = entry.as_object_mut().expect("made an object above");
    }
    map.insert(last.to_string(), value);
}

/// A side's value in its comparable form.
pub fn own_form(rule: &FieldRule, raw: &Value) -> Value {
    match (rule.transform, raw) {
        (_, Value::Null) => Value::Null,
        (Some(Transform::AdfText), value) => {
            let text = if adf::is_document(value) {
                adf::to_text(value)
            } else {
                // Plain text (the Salesforce side, or a v2 webhook string), put through the same
                // round trip Jira's side takes (CRLF, runs of blank lines), so a value compares
                // equal to its own echo from Jira.
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string());
                adf::to_text(&adf::from_text(&text))
            };
            // Rich text round-trips with trailing whitespace differences; they are not edits.
            let text = text.trim_end().to_string();
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            }
        }
        (Some(Transform::Datetime), Value::String(text)) => parse_datetime(text)
            .map(Value::from)
            .unwrap_or_else(|| raw.clone()),
        (_, value) => value.clone(),
    }
}

/// Translate an own-form value from `from` to the other side's own form.
pub fn translate(rule: &FieldRule, from: Side, value: &Value) -> Value {
    let Value::String(text) = value else {
        return value.clone();
    };
    let mapped = match from {
        Side::Left => rule.map.as_ref().and_then(|m| m.get(text)),
        Side::Right => match &rule.reverse_map {
            Some(reverse) => reverse.get(text),
            // Config validation made sure `map` is one-to-one when there is no reverse map.
            None => rule
                .map
                .as_ref()
                .and_then(|m| m.iter().find(|(_, v)| *v == text).map(|(k, _)| k)),
        },
    };
    mapped.map_or_else(|| value.clone(), |m| Value::String(m.clone()))
}

/// Put an own-form value into the fields of a write to a side of `kind`, at the rule's path
/// on that side.
pub fn put(
    fields: &mut Map<String, Value>,
    rule: &FieldRule,
    kind: ConnectorKind,
    path: &str,
    value: &Value,
) {
    let encoded = encode(rule, kind, value);
    match (kind, &encoded) {
        // Jira clears an object field as a whole (`{"priority": null}`); a null inside it
        // (`{"priority": {"name": null}}`) is refused.
        (ConnectorKind::Jira, Value::Null) if path.contains('.') => {
            let top = path.split('.').next().unwrap_or(path);
            fields.insert(top.to_string(), Value::Null);
        }
        _ => set_path(fields, path, encoded),
    }
}

/// Encode an own-form value for a write to a side of `kind`.
pub fn encode(rule: &FieldRule, kind: ConnectorKind, value: &Value) -> Value {
    match (rule.transform, kind, value) {
        (_, _, Value::Null) => Value::Null,
        (Some(Transform::AdfText), ConnectorKind::Jira, Value::String(text)) => {
            adf::from_text(text)
        }
        (Some(Transform::Datetime), ConnectorKind::Jira, Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|at| Value::String(at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()))
            .unwrap_or_else(|| value.clone()),
        (Some(Transform::Datetime), ConnectorKind::Salesforce, Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|at| Value::String(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
            .unwrap_or_else(|| value.clone()),
        _ => value.clone(),
    }
}

pub use crate::connectors::parse_timestamp as parse_datetime;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(text: &str) -> FieldRule {
        crate::config::from_toml(text)
    }

    #[test]
    fn paths_read_and_write_nested_fields() {
        let fields = json!({"priority": {"name": "High"}, "assignee": null, "summary": "s"});
        let fields = fields.as_object().unwrap();
        assert_eq!(get_path(fields, "priority.name"), Some(&json!("High")));
        assert_eq!(get_path(fields, "assignee.displayName"), Some(&Value::Null));
        assert_eq!(get_path(fields, "labels"), None);
        let mut out = Map::new();
        set_path(&mut out, "status.name", json!("Done"));
        set_path(&mut out, "summary", json!("x"));
        assert_eq!(
            Value::Object(out),
            json!({"status": {"name": "Done"}, "summary": "x"})
        );
    }

    #[test]
    fn rich_text_compares_as_text_and_is_written_as_adf_to_jira() {
        let r = rule("left = \"description\"\nright = \"Description\"\ntransform = \"adf_text\"");
        let doc = adf::from_text("Hello\nworld");
        assert_eq!(own_form(&r, &doc), json!("Hello\nworld"));
        assert_eq!(
            own_form(&r, &json!("Hello\nworld\n")),
            json!("Hello\nworld")
        );
        assert_eq!(encode(&r, ConnectorKind::Jira, &json!("Hello\nworld")), doc);
        assert_eq!(
            encode(&r, ConnectorKind::Salesforce, &json!("Hello")),
            json!("Hello")
        );
    }

    #[test]
    fn a_cleared_jira_object_field_is_null_as_a_whole() {
        let r = rule("left = \"priority.name\"\nright = \"Priority\"");
        let mut fields = Map::new();
        put(
            &mut fields,
            &r,
            ConnectorKind::Jira,
            "priority.name",
            &Value::Null,
        );
        assert_eq!(Value::Object(fields), json!({"priority": null}));
        let mut fields = Map::new();
        put(
            &mut fields,
            &r,
            ConnectorKind::Salesforce,
            "Priority",
            &Value::Null,
        );
        assert_eq!(Value::Object(fields), json!({"Priority": null}));
    }

    #[test]
    fn plain_text_compares_equal_to_its_rich_text_round_trip() {
        let r = rule("left = \"description\"\nright = \"Description\"\ntransform = \"adf_text\"");
        let typed = json!("line one\r\nline two\n\n\n\nafter a gap");
        let from_jira = own_form(&r, &encode(&r, ConnectorKind::Jira, &own_form(&r, &typed)));
        assert_eq!(own_form(&r, &typed), from_jira);
    }

    #[test]
    fn value_maps_translate_both_ways_and_many_to_one_uses_the_reverse_map() {
        let r = rule(
            "left = \"priority.name\"\nright = \"Priority\"\n\
             map = { Highest = \"High\", High = \"High\", Low = \"Low\" }\n\
             reverse_map = { High = \"High\", Low = \"Low\" }",
        );
        assert_eq!(translate(&r, Side::Left, &json!("Highest")), json!("High"));
        assert_eq!(translate(&r, Side::Right, &json!("High")), json!("High"));
        assert_eq!(
            translate(&r, Side::Left, &json!("Unmapped")),
            json!("Unmapped")
        );
        let one_to_one = rule(
            "left = \"status.name\"\nright = \"Status\"\nmap = { \"To Do\" = \"New\", Done = \"Closed\" }",
        );
        assert_eq!(
            translate(&one_to_one, Side::Right, &json!("Closed")),
            json!("Done")
        );
    }

    #[test]
    fn datetimes_compare_as_instants_whatever_the_offset() {
        let r = rule("left = \"customfield_1\"\nright = \"Due__c\"\ntransform = \"datetime\"");
        let jira = own_form(&r, &json!("2024-12-29T08:41:23.303+0530"));
        let sf = own_form(&r, &json!("2024-12-29T03:11:23.303Z"));
        assert_eq!(jira, sf);
        assert_eq!(
            encode(&r, ConnectorKind::Salesforce, &jira),
            json!("2024-12-29T03:11:23.303Z")
        );
    }
}
