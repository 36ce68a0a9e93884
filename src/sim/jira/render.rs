//! The Jira emulator's JSON: issues, comments, users and metadata, as v2 or v3 shapes them.

use serde_json::{json, Map, Value};

use super::store::{format_time, Api, ChangelogEntry, Comment, Issue, Store, Transition};
use crate::adf;

/// Which fields a request asked for (`fields=` parameter).
#[derive(Debug, Clone)]
pub struct FieldSelection {
    all: bool,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl FieldSelection {
    /// Every field (`*all`, the default of `GET /issue`).
    pub fn all() -> Self {
        FieldSelection {
            all: true,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// Only the issue id (the default of `search/jql`).
    pub fn none() -> Self {
        FieldSelection {
            all: false,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// Parse `fields=summary,status` / `*all` / `*navigable` / `-comment`; `default` when absent.
    pub fn parse(param: Option<&str>, default: FieldSelection) -> Self {
        let Some(param) = param.filter(|p| !p.trim().is_empty()) else {
            return default;
        };
        let mut selection = FieldSelection::none();
        for part in param.split(',').map(str::trim) {
            match part {
                "*all" | "*navigable" => selection.all = true,
                p if p.starts_with('-') => selection.exclude.push(p[1..].to_string()),
                p => selection.include.push(p.to_string()),
            }
        }
        selection
    }

    fn wants(&self, field: &str) -> bool {
        !self.exclude.iter().any(|f| f == field)
            && (self.all || self.include.iter().any(|f| f == field))
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.include.is_empty()
    }
}

pub fn user(store: &Store, account_id: &str) -> Value {
    let Some(account) = store.account(account_id) else {
        return Value::Null;
    };
    json!({
        "self": format!("{}/rest/api/3/user?accountId={}", store.base_url, account.account_id),
        "accountId": account.account_id,
        "emailAddress": account.email,
        "displayName": account.display_name,
        "active": true,
        "timeZone": account.time_zone,
        "accountType": "atlassian",
        "avatarUrls": {},
    })
}

pub fn status(store: &Store, id: &str) -> Value {
    let Some(status) = store.status(id) else {
        return Value::Null;
    };
    let (cat_id, key, name, colour) = status.category.describe();
    json!({
        "self": format!("{}/rest/api/3/status/{}", store.base_url, status.id),
        "description": "",
        "iconUrl": "",
        "name": status.name,
        "id": status.id,
        "statusCategory": {
            "self": format!("{}/rest/api/3/statuscategory/{cat_id}", store.base_url),
            "id": cat_id,
            "key": key,
            "colorName": colour,
            "name": name,
        },
    })
}

pub fn priority(store: &Store, id: &str) -> Value {
    store.priority(id).map_or(Value::Null, |p| {
        json!({
            "self": format!("{}/rest/api/3/priority/{}", store.base_url, p.id),
            "iconUrl": "",
            "name": p.name,
            "id": p.id,
        })
    })
}

pub fn issue_type(store: &Store, id: &str) -> Value {
    store.issue_type(id).map_or(Value::Null, |t| {
        json!({
            "self": format!("{}/rest/api/3/issuetype/{}", store.base_url, t.id),
            "id": t.id,
            "description": t.description,
            "iconUrl": "",
            "name": t.name,
            "subtask": false,
            "hierarchyLevel": 0,
        })
    })
}

pub fn project(store: &Store, id: &str) -> Value {
    store.project(id).map_or(Value::Null, |p| {
        json!({
            "self": format!("{}/rest/api/3/project/{}", store.base_url, p.id),
            "id": p.id,
            "key": p.key,
            "name": p.name,
            "projectTypeKey": "software",
            "simplified": false,
            "avatarUrls": {},
        })
    })
}

/// Rich text in the version's form: ADF in v3, plain text in v2.
pub fn rich(api: Api, doc: Option<&Value>) -> Value {
    match (api, doc) {
        (_, None) => Value::Null,
        (Api::V3, Some(doc)) => doc.clone(),
        (Api::V2, Some(doc)) => Value::String(adf::to_text(doc)),
    }
}

pub fn comment(store: &Store, api: Api, issue: &Issue, comment: &Comment) -> Value {
    json!({
        "self": format!("{}/rest/api/{}/issue/{}/comment/{}", store.base_url, api.number(), issue.id, comment.id),
        "id": comment.id.to_string(),
        "author": user(store, &comment.author),
        "body": rich(api, Some(&comment.body)),
        "updateAuthor": user(store, &comment.update_author),
        "created": format_time(comment.created),
        "updated": format_time(comment.updated),
        "jsdPublic": true,
    })
}

pub fn comments_page(
    store: &Store,
    api: Api,
    issue: &Issue,
    comments: &[&Comment],
    start_at: usize,
    max_results: usize,
    total: usize,
) -> Value {
    json!({
        "startAt": start_at,
        "maxResults": max_results,
        "total": total,
        "comments": comments.iter().map(|c| comment(store, api, issue, c)).collect::<Vec<_>>(),
    })
}

pub fn changelog_entry(store: &Store, entry: &ChangelogEntry) -> Value {
    json!({
        "id": entry.id.to_string(),
        "author": user(store, &entry.author),
        "created": format_time(entry.created),
        "items": entry.items.iter().map(|i| json!({
            "field": i.field,
            "fieldtype": i.fieldtype,
            "fieldId": i.field_id,
            "from": i.from,
            "fromString": i.from_string,
            "to": i.to,
            "toString": i.to_string,
        })).collect::<Vec<_>>(),
    })
}

pub fn transition(store: &Store, t: &Transition) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "to": status(store, &t.to),
        "hasScreen": false,
        "isGlobal": false,
        "isInitial": false,
        "isAvailable": true,
        "isConditional": false,
        "isLooped": false,
    })
}

/// An issue with the selected fields; `expand` may hold `renderedFields`, `changelog`, `names`.
pub fn issue(
    store: &Store,
    api: Api,
    issue: &Issue,
    fields: &FieldSelection,
    expand: &[&str],
) -> Value {
    let mut out = Map::new();
    out.insert(
        "expand".into(),
        json!("renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"),
    );
    out.insert("id".into(), json!(issue.id.to_string()));
    out.insert(
        "self".into(),
        json!(format!(
            "{}/rest/api/{}/issue/{}",
            store.base_url,
            api.number(),
            issue.id
        )),
    );
    out.insert("key".into(), json!(issue.key));
    if !fields.is_empty() {
        out.insert(
            "fields".into(),
            Value::Object(issue_fields(store, api, issue, fields)),
        );
    }
    if expand.contains(&"renderedFields") {
        let description = issue
            .description
            .as_ref()
            .map(|d| html_paragraphs(&adf::to_text(d)));
        out.insert(
            "renderedFields".into(),
            json!({ "description": description }),
        );
    }
    if expand.contains(&"names") {
        let mut names = Map::new();
        for (id, name) in [
            ("summary", "Summary"),
            ("description", "Description"),
            ("status", "Status"),
            ("priority", "Priority"),
            ("labels", "Labels"),
        ] {
            names.insert(id.into(), json!(name));
        }
        for f in &store.custom_fields {
            names.insert(f.id.clone(), json!(f.name));
        }
        out.insert("names".into(), Value::Object(names));
    }
    if expand.contains(&"transitions") {
        // The transitions available from the issue's current status, as the transitions
        // endpoint lists them.
        let list: Vec<Value> = store
            .available_transitions(issue.id)
            .unwrap_or_default()
            .iter()
            .map(|t| transition(store, t))
            .collect();
        out.insert("transitions".into(), Value::Array(list));
    }
    if expand.contains(&"changelog") {
        let histories: Vec<Value> = issue
            .changelog
            .iter()
            .map(|e| changelog_entry(store, e))
            .collect();
        out.insert(
            "changelog".into(),
            json!({ "startAt": 0, "maxResults": histories.len(), "total": histories.len(), "histories": histories }),
        );
    }
    Value::Object(out)
}

fn html_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| {
            let escaped = p
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            format!("<p>{}</p>", escaped.replace('\n', "<br/>"))
        })
        .collect()
}

fn issue_fields(
    store: &Store,
    api: Api,
    issue: &Issue,
    selection: &FieldSelection,
) -> Map<String, Value> {
    let mut f = Map::new();
    // Values are built only for the fields asked for: most callers want a handful.
    let mut put = |name: &str, value: &dyn Fn() -> Value| {
        if selection.wants(name) {
            f.insert(name.to_string(), value());
        }
    };
    put("summary", &|| json!(issue.summary));
    put("description", &|| rich(api, issue.description.as_ref()));
    put("status", &|| status(store, &issue.status_id));
    put("priority", &|| {
        issue
            .priority_id
            .as_deref()
            .map_or(Value::Null, |p| priority(store, p))
    });
    put("issuetype", &|| issue_type(store, &issue.issue_type_id));
    put("project", &|| project(store, &issue.project_id));
    put("labels", &|| json!(issue.labels));
    put("assignee", &|| {
        issue
            .assignee
            .as_deref()
            .map_or(Value::Null, |a| user(store, a))
    });
    put("reporter", &|| user(store, &issue.reporter));
    put("creator", &|| user(store, &issue.creator));
    put("created", &|| json!(format_time(issue.created)));
    put("updated", &|| json!(format_time(issue.updated)));
    put("duedate", &|| json!(issue.duedate.map(|d| d.to_string())));
    put("resolution", &|| {
        issue
            .resolution
            .as_ref()
            .map_or(Value::Null, |r| json!({ "name": r }))
    });
    put("resolutiondate", &|| {
        json!(issue.resolution_date.map(format_time))
    });
    let comments: Vec<&Comment> = issue.comments.iter().collect();
    put("comment", &|| {
        json!({
            "comments": comments.iter().map(|c| comment(store, api, issue, c)).collect::<Vec<_>>(),
            "self": format!("{}/rest/api/{}/issue/{}/comment", store.base_url, api.number(), issue.id),
            "maxResults": comments.len(),
            "total": comments.len(),
            "startAt": 0,
        })
    });
    for field in &store.custom_fields {
        put(&field.id, &|| {
            issue.custom.get(&field.id).cloned().unwrap_or(Value::Null)
        });
    }
    f
}
