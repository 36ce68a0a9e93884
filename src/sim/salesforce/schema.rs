//! Object and field metadata: what `describe` reports and what record validation enforces.
//!
//! The default seed holds Case, CaseComment, Account and Contact with the fields Tandem and its
//! users touch, plus the custom external id `Case.Jira_Key__c`. A JSON seed file adds objects and
//! fields. Field names are case-insensitive on input, as in Salesforce, and canonical on output.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

/// Field types the emulator knows, named as `describe` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Id,
    String,
    Textarea,
    Picklist,
    Boolean,
    Datetime,
    Date,
    Reference,
    Email,
    Phone,
    Url,
    Double,
    Int,
    Currency,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::Textarea => "textarea",
            FieldType::Picklist => "picklist",
            FieldType::Boolean => "boolean",
            FieldType::Datetime => "datetime",
            FieldType::Date => "date",
            FieldType::Reference => "reference",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
            FieldType::Double => "double",
            FieldType::Int => "int",
            FieldType::Currency => "currency",
        }
    }

    /// Text-valued types: compared case-insensitively in SOQL, quoted literals.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::Id
                | FieldType::String
                | FieldType::Textarea
                | FieldType::Picklist
                | FieldType::Reference
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Url
        )
    }

    pub fn is_number(self) -> bool {
        matches!(
            self,
            FieldType::Double | FieldType::Int | FieldType::Currency
        )
    }
}

/// Who sets a field: the client, or the system alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Createable and updateable.
    ReadWrite,
    /// Createable, not updateable (e.g. `CaseComment.ParentId`).
    CreateOnly,
    /// System-maintained (ids, audit fields, autonumbers).
    ReadOnly,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub label: String,
    pub kind: FieldType,
    pub length: usize,
    pub access: Access,
    /// Must hold a value after create and every update.
    pub required: bool,
    pub external_id: bool,
    pub unique: bool,
    pub picklist: Vec<String>,
    pub default: Option<Value>,
    pub reference_to: Vec<String>,
    pub auto_number: bool,
}

impl Field {
    fn new(name: &str, kind: FieldType, access: Access) -> Field {
        let length = match kind {
            FieldType::Id | FieldType::Reference => 18,
            FieldType::Textarea => 32_000,
            FieldType::String | FieldType::Picklist | FieldType::Email | FieldType::Url => 255,
            FieldType::Phone => 40,
            _ => 0,
        };
        Field {
            name: name.to_string(),
            label: label_of(name),
            kind,
            length,
            access,
            required: false,
            external_id: false,
            unique: false,
            picklist: Vec::new(),
            default: None,
            reference_to: Vec::new(),
            auto_number: false,
        }
    }

    fn rw(name: &str, kind: FieldType) -> Field {
        Field::new(name, kind, Access::ReadWrite)
    }

    fn ro(name: &str, kind: FieldType) -> Field {
        Field::new(name, kind, Access::ReadOnly)
    }

    fn required(mut self) -> Field {
        self.required = true;
        self
    }

    fn picklist(mut self, values: &[&str], default: Option<&str>) -> Field {
        self.picklist = values.iter().map(|v| v.to_string()).collect();
        self.default = default.map(|d| Value::String(d.to_string()));
        self
    }

    fn references(mut self, object: &str) -> Field {
        self.reference_to = vec![object.to_string()];
        self
    }

    fn length(mut self, length: usize) -> Field {
        self.length = length;
        self
    }

    pub fn createable(&self) -> bool {
        self.access != Access::ReadOnly
    }

    pub fn updateable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    /// `describe`'s view of the field.
    pub fn describe(&self) -> Value {
        let picklist: Vec<Value> = self
            .picklist
            .iter()
            .map(|v| {
                json!({
                    "active": true,
                    "defaultValue": self.default.as_ref().and_then(Value::as_str) == Some(v),
                    "label": v,
                    "validFor": null,
                    "value": v,
                })
            })
            .collect();
        let boolean = self.kind == FieldType::Boolean;
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.kind.as_str(),
            "soapType": soap_type(self.kind),
            "length": self.length,
            "custom": self.name.ends_with("__c"),
            // Booleans are never nillable in Salesforce; they default to false.
            "nillable": !self.required && !boolean,
            "createable": self.createable(),
            "updateable": self.updateable(),
            "defaultedOnCreate": self.default.is_some() || boolean || self.access == Access::ReadOnly,
            "defaultValue": self.default,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.kind == FieldType::Id || self.external_id || self.auto_number,
            "caseSensitive": false,
            "autoNumber": self.auto_number,
            "calculated": false,
            "filterable": true,
            "sortable": self.kind != FieldType::Textarea,
            "restrictedPicklist": self.kind == FieldType::Picklist,
            "picklistValues": picklist,
            "referenceTo": self.reference_to,
            "relationshipName": if self.kind == FieldType::Reference {
                Value::String(self.name.trim_end_matches("Id").to_string())
            } else {
                Value::Null
            },
        })
    }
}

fn soap_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Id | FieldType::Reference => "tns:ID",
        FieldType::Boolean => "xsd:boolean",
        FieldType::Datetime => "xsd:dateTime",
        FieldType::Date => "xsd:date",
        FieldType::Double | FieldType::Currency => "xsd:double",
        FieldType::Int => "xsd:int",
        _ => "xsd:string",
    }
}

/// "Jira_Key__c" → "Jira Key", "LastModifiedDate" → "Last Modified Date".
fn label_of(name: &str) -> String {
    let base = name.trim_end_matches("__c").replace('_', " ");
    let mut label = String::new();
    let mut previous_lower = false;
    for c in base.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            label.push(' ');
        }
        previous_lower = c.is_ascii_lowercase();
        label.push(c);
    }
    label
}

#[derive(Debug, Clone)]
pub struct Object {
    pub name: String,
    pub label: String,
    pub key_prefix: String,
    pub fields: Vec<Field>,
    by_lower: HashMap<String, usize>,
}

impl Object {
    fn new(name: &str, key_prefix: &str, fields: Vec<Field>) -> Object {
        let mut object = Object {
            name: name.to_string(),
            label: label_of(name),
            key_prefix: key_prefix.to_string(),
            fields: Vec::new(),
            by_lower: HashMap::new(),
        };
        for field in fields {
            object.push(field);
        }
        object
    }

    fn push(&mut self, field: Field) {
        self.by_lower
            .insert(field.name.to_ascii_lowercase(), self.fields.len());
        self.fields.push(field);
    }

    /// The field named `name`, in any letter case.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.fields[i])
    }

    pub fn auto_number_field(&self) -> Option<&Field> {
        self.fields.iter().find(|f| f.auto_number)
    }

    pub fn describe(&self, version: &str) -> Value {
        let base = format!("/services/data/{version}/sobjects/{}", self.name);
        json!({
            "name": self.name,
            "label": self.label,
            "labelPlural": format!("{}s", self.label),
            "keyPrefix": self.key_prefix,
            "custom": self.name.ends_with("__c"),
            "createable": true,
            "updateable": true,
            "deletable": true,
            "queryable": true,
            "searchable": true,
            "retrieveable": true,
            "undeletable": true,
            "fields": self.fields.iter().map(Field::describe).collect::<Vec<_>>(),
            "urls": {
                "sobject": base,
                "describe": format!("{base}/describe"),
                "rowTemplate": format!("{base}/{{ID}}"),
            },
        })
    }

    /// The short form used by `GET sobjects` and `GET sobjects/{Type}`.
    pub fn summary(&self, version: &str) -> Value {
        let mut value = self.describe(version);
        if let Some(map) = value.as_object_mut() {
            map.remove("fields");
        }
        value
    }
}

/// Fields every object has: the id and the audit trail.
fn system_fields() -> Vec<Field> {
    vec![
        Field::ro("Id", FieldType::Id),
        Field::ro("IsDeleted", FieldType::Boolean),
        Field::ro("CreatedDate", FieldType::Datetime),
        Field::ro("CreatedById", FieldType::Reference).references("User"),
        Field::ro("LastModifiedDate", FieldType::Datetime),
        Field::ro("LastModifiedById", FieldType::Reference).references("User"),
        Field::ro("SystemModstamp", FieldType::Datetime),
    ]
}

fn owned(mut fields: Vec<Field>) -> Vec<Field> {
    fields.push(Field::rw("OwnerId", FieldType::Reference).references("User"));
    fields
}

#[derive(Debug, Clone, Default)]
pub struct Schema {
    objects: Vec<Object>,
    by_lower: HashMap<String, usize>,
    by_prefix: HashMap<String, usize>,
}

impl Schema {
    /// The default seed: Case, CaseComment, Account, Contact.
    pub fn seeded() -> Schema {
        let mut schema = Schema::default();
        let mut case = system_fields();
        let mut case_number = Field::ro("CaseNumber", FieldType::String).length(30);
        case_number.auto_number = true;
        case.extend([
            case_number,
            Field::rw("Subject", FieldType::String),
            Field::rw("Description", FieldType::Textarea),
            Field::rw("Status", FieldType::Picklist)
                .required()
                .picklist(&["New", "Working", "Escalated", "Closed"], Some("New")),
            Field::rw("Priority", FieldType::Picklist)
                .picklist(&["High", "Medium", "Low"], Some("Medium")),
            Field::rw("Origin", FieldType::Picklist).picklist(&["Phone", "Email", "Web"], None),
            Field::rw("Type", FieldType::Picklist).picklist(
                &[
                    "Mechanical",
                    "Electrical",
                    "Electronic",
                    "Structural",
                    "Other",
                ],
                None,
            ),
            Field::rw("Reason", FieldType::Picklist).picklist(
                &[
                    "Installation",
                    "Equipment Complexity",
                    "Performance",
                    "Breakdown",
                    "Equipment Design",
                    "Feedback",
                    "Other",
                ],
                None,
            ),
            Field::ro("IsClosed", FieldType::Boolean),
            Field::rw("IsEscalated", FieldType::Boolean),
            Field::rw("AccountId", FieldType::Reference).references("Account"),
            Field::rw("ContactId", FieldType::Reference).references("Contact"),
            Field::rw("SuppliedEmail", FieldType::Email).length(80),
            Field::rw("SuppliedName", FieldType::String).length(80),
            Field::ro("ClosedDate", FieldType::Datetime),
        ]);
        let mut jira_key = Field::rw("Jira_Key__c", FieldType::String);
        jira_key.external_id = true;
        jira_key.unique = true;
        case.push(jira_key);
        schema.add(Object::new("Case", "500", owned(case)));

        let mut comment = system_fields();
        comment.extend([
            Field::new("ParentId", FieldType::Reference, Access::CreateOnly)
                .required()
                .references("Case"),
            Field::rw("IsPublished", FieldType::Boolean),
            Field::rw("CommentBody", FieldType::Textarea).length(4_000),
        ]);
        schema.add(Object::new("CaseComment", "00a", comment));

        let mut account = system_fields();
        account.extend([
            Field::rw("Name", FieldType::String).required(),
            Field::rw("Type", FieldType::Picklist).picklist(
                &[
                    "Prospect",
                    "Customer - Direct",
                    "Customer - Channel",
                    "Partner",
                    "Other",
                ],
                None,
            ),
            Field::rw("Industry", FieldType::Picklist).picklist(
                &["Agriculture", "Banking", "Education", "Technology", "Other"],
                None,
            ),
            Field::rw("Phone", FieldType::Phone),
            Field::rw("Website", FieldType::Url),
            Field::rw("Description", FieldType::Textarea),
            Field::rw("AccountNumber", FieldType::String).length(40),
        ]);
        schema.add(Object::new("Account", "001", owned(account)));

        let mut contact = system_fields();
        contact.extend([
            Field::rw("AccountId", FieldType::Reference).references("Account"),
            Field::rw("FirstName", FieldType::String).length(40),
            Field::rw("LastName", FieldType::String)
                .length(80)
                .required(),
            Field::ro("Name", FieldType::String).length(121),
            Field::rw("Email", FieldType::Email).length(80),
            Field::rw("Phone", FieldType::Phone),
            Field::rw("Title", FieldType::String).length(128),
        ]);
        schema.add(Object::new("Contact", "003", owned(contact)));
        schema
    }

    fn add(&mut self, object: Object) {
        let index = self.objects.len();
        self.by_lower
            .insert(object.name.to_ascii_lowercase(), index);
        self.by_prefix.insert(object.key_prefix.clone(), index);
        self.objects.push(object);
    }

    pub fn object(&self, name: &str) -> Option<&Object> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.objects[i])
    }

    /// The object an id belongs to, by its key prefix.
    pub fn object_of_id(&self, id: &str) -> Option<&Object> {
        id.get(..3)
            .and_then(|prefix| self.by_prefix.get(prefix))
            .map(|&i| &self.objects[i])
    }

    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Apply a seed file's objects and fields.
    pub fn apply(&mut self, seed: SeedFile) -> Result<(), SeedError> {
        for spec in seed.objects {
            if !spec.name.ends_with("__c") {
                return Err(SeedError::Invalid(format!(
                    "custom object {} must end in __c",
                    spec.name
                )));
            }
            if self.object(&spec.name).is_some() {
                return Err(SeedError::Invalid(format!("object {} exists", spec.name)));
            }
            if spec.key_prefix.len() != 3
                || !spec.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
                || self.by_prefix.contains_key(&spec.key_prefix)
            {
                return Err(SeedError::Invalid(format!(
                    "object {}: key prefix {:?} must be 3 letters or digits, unused",
                    spec.name, spec.key_prefix
                )));
            }
            let mut fields = system_fields();
            fields.push(Field::rw("Name", FieldType::String).length(80).required());
            let mut object = Object::new(&spec.name, &spec.key_prefix, owned(fields));
            if let Some(label) = spec.label {
                object.label = label;
            }
            self.add(object);
            self.add_fields(&spec.name, spec.fields)?;
        }
        for (object, fields) in seed.fields {
            self.add_fields(&object, fields)?;
        }
        Ok(())
    }

    fn add_fields(&mut self, object: &str, specs: Vec<FieldSpec>) -> Result<(), SeedError> {
        let index = *self
            .by_lower
            .get(&object.to_ascii_lowercase())
            .ok_or_else(|| SeedError::Invalid(format!("no object {object} to add fields to")))?;
        for spec in specs {
            if !spec.name.ends_with("__c") {
                return Err(SeedError::Invalid(format!(
                    "custom field {object}.{} must end in __c",
                    spec.name
                )));
            }
            if self.objects[index].field(&spec.name).is_some() {
                return Err(SeedError::Invalid(format!(
                    "field {object}.{} exists",
                    spec.name
                )));
            }
            let mut field = Field::rw(&spec.name, spec.kind);
            if let Some(label) = spec.label {
                field.label = label;
            }
            if let Some(length) = spec.length {
                field.length = length;
            }
            field.required = spec.required;
            field.external_id = spec.external_id;
            field.unique = spec.unique;
            field.picklist = spec.picklist_values;
            field.default = spec.default_value;
            field.reference_to = spec.reference_to;
            if field.kind == FieldType::Picklist && field.picklist.is_empty() {
                return Err(SeedError::Invalid(format!(
                    "picklist {object}.{} needs picklistValues",
                    spec.name
                )));
            }
            self.objects[index].push(field);
        }
        Ok(())
    }
}

/// The seed file: `{"objects":[{"name","keyPrefix","label"?,"fields":[…]}],
/// "fields":{"Case":[…]}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedFile {
    pub objects: Vec<ObjectSpec>,
    pub fields: HashMap<String, Vec<FieldSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectSpec {
    pub name: String,
    pub key_prefix: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub length: Option<usize>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub external_id: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub picklist_values: Vec<String>,
    #[serde(default)]
    pub default_value: Option<Value>,
    #[serde(default)]
    pub reference_to: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("reading seed file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing seed file {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("seed file: {0}")]
    Invalid(String),
}

impl SeedFile {
    pub fn load(path: &Path) -> Result<SeedFile, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| SeedError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lookup_ignores_letter_case_and_returns_the_canonical_name() {
        let schema = Schema::seeded();
        let case = schema.object("case").expect("Case is seeded");
        assert_eq!(case.name, "Case");
        assert_eq!(
            case.field("jira_key__C").map(|f| f.name.as_str()),
            Some("Jira_Key__c")
        );
    }

    #[test]
    fn a_seed_file_adds_custom_objects_and_fields() {
        let mut schema = Schema::seeded();
        let seed: SeedFile = serde_json::from_value(json!({
            "objects": [{"name": "Invoice__c", "keyPrefix": "a01", "fields": [
                {"name": "Amount__c", "type": "currency"}
            ]}],
            "fields": {"Case": [{"name": "Severity__c", "type": "picklist",
                                 "picklistValues": ["S1", "S2"]}]}
        }))
        .expect("seed parses");
        schema.apply(seed).expect("seed applies");
        assert!(schema
            .object("Invoice__c")
            .and_then(|o| o.field("Amount__c"))
            .is_some());
        assert_eq!(
            schema
                .object_of_id("a015g0000000001AAA")
                .map(|o| o.name.as_str()),
            Some("Invoice__c")
        );
        assert!(schema
            .object("Case")
            .and_then(|o| o.field("Severity__c"))
            .is_some());
    }

    #[test]
    fn a_custom_field_without_the_suffix_is_refused() {
        let mut schema = Schema::seeded();
        let seed: SeedFile = serde_json::from_value(
            json!({"fields": {"Case": [{"name": "Severity", "type": "string"}]}}),
        )
        .expect("seed parses");
        assert!(schema.apply(seed).is_err());
    }

    #[test]
    fn labels_are_spaced_words() {
        assert_eq!(label_of("LastModifiedDate"), "Last Modified Date");
        assert_eq!(label_of("Jira_Key__c"), "Jira Key");
    }
}
