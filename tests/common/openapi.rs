//! Checks a JSON answer against the response schema of an OpenAPI 3.0 or 3.1 description.
//!
//! Covers the parts of the schema dialect that descriptions use for responses: `$ref`, `type`
//! (3.1's lists of types included), `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `allOf`, `oneOf`/`anyOf` and `nullable`. Unknown keywords are ignored (they narrow,
//! never widen).
// Each test that includes this file uses part of it: a vendor's description or Tandem's own.
#![allow(dead_code)]

use serde_json::Value;

pub struct Spec {
    doc: Value,
    /// Accept a null wherever it appears (see [`Spec::load`]).
    lenient_nulls: bool,
}

impl Spec {
    /// A vendor's description: real answers carry nulls that descriptions rarely mark
    /// `nullable`, so a null is accepted anywhere.
    pub fn load(path: &std::path::Path) -> Spec {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "cannot read the OpenAPI description {} ({e}); it lives in shared/api beside the repo",
                path.display()
            )
        });
        Spec {
            doc: serde_json::from_str(&text).expect("the OpenAPI description is JSON"),
            lenient_nulls: true,
        }
    }

    /// A description that marks every null it allows (3.1 `type: [..., "null"]`): a null
    /// anywhere else is a mismatch.
    pub fn strict(doc: Value) -> Spec {
        Spec {
            doc,
            lenient_nulls: false,
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The schema of `method path` answering `status` with JSON.
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        let operation = self.doc["paths"].get(path)?.get(method)?;
        let response = operation["responses"].get(status.to_string())?;
        let response = self.resolve(response);
        response
            .get("content")?
            .get("application/json")?
            .get("schema")
    }

    /// A named schema under `components/schemas`.
    pub fn named(&self, name: &str) -> Option<&Value> {
        self.doc["components"]["schemas"].get(name)
    }

    pub fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let pointer = reference.trim_start_matches('#');
            schema = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolvable $ref {reference}"));
        }
        schema
    }

    /// Every mismatch between `value` and `schema`, with JSON pointers.
    pub fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        self.walk(schema, value, "", &mut problems);
        problems
    }

    fn walk(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && self.lenient_nulls {
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.walk(s, value, at, problems);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let fits = options.iter().any(|s| {
                    let mut p = Vec::new();
                    self.walk(s, value, at, &mut p);
                    p.is_empty()
                });
                if !fits {
                    problems.push(format!("{at}: matches none of {key}"));
                }
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                problems.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        let kinds: Vec<&str> = match schema.get("type") {
            Some(Value::String(kind)) => vec![kind],
            Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = |kind: &str| match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        let nullable = schema.get("nullable") == Some(&Value::Bool(true));
        let ok = kinds.is_empty() || kinds.iter().any(|k| fits(k)) || (nullable && value.is_null());
        if !ok {
            problems.push(format!(
                "{at}: expected {}, got {value}",
                kinds.join(" or ")
            ));
            return;
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(name) {
                        problems.push(format!("{at}: missing required `{name}`"));
                    }
                }
            }
            for (name, child) in object {
                let path = format!("{at}/{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(s) => self.walk(s, child, &path, problems),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            problems.push(format!("{path}: not in the description"))
                        }
                        Some(s @ Value::Object(_)) => self.walk(s, child, &path, problems),
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.walk(items, item, &format!("{at}/{i}"), problems);
            }
        }
    }
}
