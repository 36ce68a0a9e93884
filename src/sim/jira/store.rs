//! The Jira emulator's data and every change to it, with Jira's validation rules.
//!
//! Rich text is stored as ADF (what v3 speaks); v2 reads and writes it as plain text. Every
//! mutation records a changelog entry and returns the [`Event`] that webhooks are made from.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::adf;

/// The API version a request came through: v3 speaks ADF, v2 plain strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

impl Api {
    pub fn number(self) -> u8 {
        match self {
            Api::V2 => 2,
            Api::V3 => 3,
        }
    }
}

/// An error in Jira's shape: `{"errorMessages":[…],"errors":{field: message}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JiraError {
    pub status: u16,
    pub messages: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

impl JiraError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        JiraError {
            status,
            messages: vec![message.into()],
            errors: BTreeMap::new(),
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = BTreeMap::new();
        errors.insert(field.to_string(), message.into());
        JiraError {
            status: 400,
            messages: Vec::new(),
            errors,
        }
    }

    pub fn issue_not_found() -> Self {
        JiraError::new(
            404,
            "Issue does not exist or you do not have permission to see it.",
        )
    }

    fn cannot_set(field: &str) -> Self {
        JiraError::field(
            field,
            format!(
                "Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."
            ),
        )
    }

    pub fn body(&self) -> Value {
        json!({ "errorMessages": self.messages, "errors": self.errors })
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub email: String,
    pub display_name: String,
    pub api_token: String,
    pub time_zone: String,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub id: String,
    pub key: String,
    pub name: String,
    pub issue_types: Vec<String>,
    next_number: u64,
}

#[derive(Debug, Clone)]
pub struct IssueType {
    pub id: String,
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Priority {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    New,
    Indeterminate,
    Done,
}

impl Category {
    /// (id, key, name, colour) as Jira reports them.
    pub fn describe(self) -> (u8, &'static str, &'static str, &'static str) {
        match self {
            Category::New => (2, "new", "To Do", "blue-gray"),
            Category::Indeterminate => (4, "indeterminate", "In Progress", "yellow"),
            Category::Done => (3, "done", "Done", "green"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub name: String,
    pub category: Category,
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub id: String,
    pub name: String,
    /// Statuses it is available from.
    pub from: Vec<String>,
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    String,
    Number,
    Date,
    Datetime,
}

#[derive(Debug, Clone)]
pub struct CustomField {
    pub id: String,
    pub name: String,
    pub kind: FieldKind,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub update_author: String,
    pub body: Value,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeItem {
    pub field: String,
    pub fieldtype: &'static str,
    pub field_id: String,
    pub from: Option<String>,
    pub from_string: Option<String>,
    pub to: Option<String>,
    pub to_string: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ChangelogEntry {
    pub id: u64,
    pub author: String,
    pub created: DateTime<Utc>,
    pub items: Vec<ChangeItem>,
}

#[derive(Debug, Clone)]
pub struct Issue {
    pub id: u64,
    pub key: String,
    pub project_id: String,
    pub issue_type_id: String,
    pub summary: String,
    pub description: Option<Value>,
    pub status_id: String,
    pub priority_id: Option<String>,
    pub labels: Vec<String>,
    pub assignee: Option<String>,
    pub reporter: String,
    pub creator: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub duedate: Option<NaiveDate>,
    pub resolution: Option<String>,
    pub resolution_date: Option<DateTime<Utc>>,
    pub custom: BTreeMap<String, Value>,
    pub comments: Vec<Comment>,
    pub changelog: Vec<ChangelogEntry>,
    pub properties: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: u64,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub jql: Option<String>,
    pub secret: Option<String>,
}

/// What a mutation did, for webhooks.
#[derive(Debug, Clone)]
pub enum Event {
    IssueCreated {
        issue: u64,
    },
    IssueUpdated {
        issue: u64,
        changelog: ChangelogEntry,
        type_name: &'static str,
    },
    /// Carries the issue as it was, since it is gone from the store.
    IssueDeleted {
        issue: Box<Issue>,
    },
    CommentCreated {
        issue: u64,
        comment: u64,
    },
    CommentUpdated {
        issue: u64,
        comment: u64,
    },
    CommentDeleted {
        issue: u64,
        comment: Box<Comment>,
    },
}

/// Extra projects, custom fields and accounts, from `--seed-file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub projects: Vec<SeedProject>,
    #[serde(default)]
    pub custom_fields: Vec<SeedField>,
    #[serde(default)]
    pub accounts: Vec<SeedAccount>,
    /// Replaces the default workflow.
    #[serde(default)]
    pub workflow: Option<SeedWorkflow>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedWorkflow {
    /// The first is the status new issues start in.
    pub statuses: Vec<SeedStatus>,
    pub transitions: Vec<SeedTransition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedStatus {
    pub name: String,
    /// `new`, `indeterminate` or `done`.
    pub category: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTransition {
    pub name: String,
    /// Status names it is available from.
    pub from: Vec<String>,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedProject {
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedField {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAccount {
    pub email: String,
    pub display_name: String,
    pub api_token: String,
}

pub struct Store {
    pub base_url: String,
    pub accounts: Vec<Account>,
    pub oauth_tokens: HashMap<String, String>,
    pub projects: Vec<Project>,
    pub issue_types: Vec<IssueType>,
    pub priorities: Vec<Priority>,
    pub statuses: Vec<Status>,
    pub transitions: Vec<Transition>,
    pub custom_fields: Vec<CustomField>,
    pub issues: BTreeMap<u64, Issue>,
    keys: HashMap<String, u64>,
    pub webhooks: Vec<Webhook>,
    next_issue_id: u64,
    next_comment_id: u64,
    next_changelog_id: u64,
    next_webhook_id: u64,
    last_time: i64,
}

pub const DEFAULT_STATUS: &str = "10000";

impl Store {
    /// An empty site with the default workflow, priorities and the given API account.
    pub fn new(base_url: String, email: &str, api_token: &str) -> Store {
        let status = |id: &str, name: &str, category| Status {
            id: id.into(),
            name: name.into(),
            category,
        };
        let transition = |id: &str, name: &str, from: &[&str], to: &str| Transition {
            id: id.into(),
            name: name.into(),
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.into(),
        };
        Store {
            base_url,
            accounts: vec![Account {
                account_id: "5b10a2844c20165700ede21g".into(),
                email: email.into(),
                display_name: "Tandem Sim".into(),
                api_token: api_token.into(),
                time_zone: "UTC".into(),
            }],
            oauth_tokens: HashMap::new(),
            projects: Vec::new(),
            issue_types: vec![
                IssueType {
                    id: "10001".into(),
                    name: "Task".into(),
                    description: "A small, distinct piece of work.".into(),
                },
                IssueType {
                    id: "10004".into(),
                    name: "Bug".into(),
                    description: "A problem or error.".into(),
                },
            ],
            priorities: ["Highest", "High", "Medium", "Low", "Lowest"]
                .iter()
                .enumerate()
                .map(|(i, name)| Priority {
                    id: (i + 1).to_string(),
                    name: name.to_string(),
                })
                .collect(),
            statuses: vec![
                status(DEFAULT_STATUS, "To Do", Category::New),
                status("3", "In Progress", Category::Indeterminate),
                status("10001", "Done", Category::Done),
            ],
            // To Do → In Progress → Done and back, one step at a time.
            transitions: vec![
                transition("11", "To Do", &["3"], DEFAULT_STATUS),
                transition("21", "In Progress", &[DEFAULT_STATUS, "10001"], "3"),
                transition("31", "Done", &["3"], "10001"),
            ],
            custom_fields: Vec::new(),
            issues: BTreeMap::new(),
            keys: HashMap::new(),
            webhooks: Vec::new(),
            next_issue_id: 10000,
            next_comment_id: 10000,
            next_changelog_id: 10000,
            next_webhook_id: 1,
            last_time: 0,
        }
    }

    /// The default seed: project SUP and the two custom fields Tandem's example flow uses.
    pub fn seed_default(&mut self) {
        self.add_project("SUP", "Support");
        self.add_custom_field("customfield_10050", "Salesforce Case Id", FieldKind::String);
        self.add_custom_field(
            "customfield_10051",
            "Salesforce Case Number",
            FieldKind::String,
        );
    }

    /// Apply a seed file; an inconsistent workflow is refused with the reason.
    pub fn apply_seed(&mut self, seed: &SeedFile) -> Result<(), String> {
        if let Some(workflow) = &seed.workflow {
            self.replace_workflow(workflow)?;
        }
        for p in &seed.projects {
            self.add_project(&p.key, &p.name);
        }
        for f in &seed.custom_fields {
            self.add_custom_field(&f.id, &f.name, f.kind);
        }
        for (i, a) in seed.accounts.iter().enumerate() {
            self.accounts.push(Account {
                account_id: format!("5b10ac8d82e05b22cc7d{:04}", i + 1),
                email: a.email.clone(),
                display_name: a.display_name.clone(),
                api_token: a.api_token.clone(),
                time_zone: "UTC".into(),
            });
        }
        Ok(())
    }

    fn replace_workflow(&mut self, workflow: &SeedWorkflow) -> Result<(), String> {
        if workflow.statuses.is_empty() {
            return Err("a workflow needs at least one status".into());
        }
        let mut statuses = Vec::new();
        for (i, s) in workflow.statuses.iter().enumerate() {
            let category = match s.category.as_str() {
                "new" => Category::New,
                "indeterminate" => Category::Indeterminate,
                "done" => Category::Done,
                other => return Err(format!("status `{}`: unknown category `{other}`", s.name)),
            };
            // The first status keeps the id new issues start with.
            let id = if i == 0 {
                DEFAULT_STATUS.to_string()
            } else {
                (20000 + i).to_string()
            };
            statuses.push(Status {
                id,
                name: s.name.clone(),
                category,
            });
        }
        let id_of = |name: &str| {
            statuses
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id.clone())
                .ok_or_else(|| format!("transition refers to unknown status `{name}`"))
        };
        let mut transitions = Vec::new();
        for (i, t) in workflow.transitions.iter().enumerate() {
            transitions.push(Transition {
                id: (101 + 10 * i).to_string(),
                name: t.name.clone(),
                from: t.from.iter().map(|f| id_of(f)).collect::<Result<_, _>>()?,
                to: id_of(&t.to)?,
            });
        }
        self.statuses = statuses;
        self.transitions = transitions;
        Ok(())
    }

    pub fn add_project(&mut self, key: &str, name: &str) {
        let id = (10000 + self.projects.len()).to_string();
        self.projects.push(Project {
            id,
            key: key.into(),
            name: name.into(),
            issue_types: self.issue_types.iter().map(|t| t.id.clone()).collect(),
            next_number: 1,
        });
    }

    pub fn add_custom_field(&mut self, id: &str, name: &str, kind: FieldKind) {
        self.custom_fields.push(CustomField {
            id: id.into(),
            name: name.into(),
            kind,
        });
    }

    pub fn add_webhook(
        &mut self,
        name: String,
        url: String,
        events: Vec<String>,
        jql: Option<String>,
        secret: Option<String>,
    ) -> u64 {
        let id = self.next_webhook_id;
        self.next_webhook_id += 1;
        self.webhooks.push(Webhook {
            id,
            name,
            url,
            events,
            jql,
            secret,
        });
        id
    }

    /// Strictly increasing millisecond clock, so no two writes share an `updated`.
    pub fn now(&mut self) -> DateTime<Utc> {
        let ms = Utc::now().timestamp_millis().max(self.last_time + 1);
        self.last_time = ms;
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_else(Utc::now)
    }

    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.account_id == account_id)
    }

    pub fn status(&self, id: &str) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id)
    }

    pub fn priority(&self, id: &str) -> Option<&Priority> {
        self.priorities.iter().find(|p| p.id == id)
    }

    pub fn project(&self, id_or_key: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|p| p.id == id_or_key || p.key.eq_ignore_ascii_case(id_or_key))
    }

    pub fn issue_type(&self, id: &str) -> Option<&IssueType> {
        self.issue_types.iter().find(|t| t.id == id)
    }

    pub fn custom_field(&self, id_or_name: &str) -> Option<&CustomField> {
        self.custom_fields
            .iter()
            .find(|f| f.id == id_or_name || f.name.eq_ignore_ascii_case(id_or_name))
    }

    /// An issue by numeric id or key (keys are case-insensitive, as in Jira).
    pub fn find(&self, id_or_key: &str) -> Option<&Issue> {
        self.resolve(id_or_key).and_then(|id| self.issues.get(&id))
    }

    pub fn resolve(&self, id_or_key: &str) -> Option<u64> {
        match id_or_key.parse::<u64>() {
            Ok(id) => self.issues.contains_key(&id).then_some(id),
            Err(_) => self.keys.get(&id_or_key.to_ascii_uppercase()).copied(),
        }
    }

    fn changelog_id(&mut self) -> u64 {
        self.next_changelog_id += 1;
        self.next_changelog_id
    }

    /// `POST /issue`: validate everything before changing anything.
    pub fn create_issue(&mut self, api: Api, actor: &str, body: &Value) -> Result<u64, JiraError> {
        let fields = body
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                JiraError::new(400, "Can not deserialize: the request has no fields object")
            })?;
        let project = match fields.get("project") {
            None => {
                return Err(JiraError::field(
                    "project",
                    "Specify a valid project ID or key",
                ))
            }
            Some(p) => {
                // By id, key or name, as Jira takes it.
                let by = p.get("id").or_else(|| p.get("key")).and_then(Value::as_str);
                let name = p.get("name").and_then(Value::as_str);
                by.and_then(|b| self.project(b))
                    .or_else(|| {
                        name.and_then(|n| {
                            self.projects
                                .iter()
                                .find(|p| p.name.eq_ignore_ascii_case(n))
                        })
                    })
                    .cloned()
                    .ok_or_else(|| {
                        JiraError::field("project", "Specify a valid project ID or key")
                    })?
            }
        };
        let issue_type = match fields.get("issuetype") {
            None => return Err(JiraError::field("issuetype", "Specify an issue type")),
            Some(t) => {
                let id = t.get("id").and_then(Value::as_str);
                let name = t.get("name").and_then(Value::as_str);
                self.issue_types
                    .iter()
                    .find(|it| {
                        project.issue_types.contains(&it.id)
                            && (Some(it.id.as_str()) == id
                                || name.is_some_and(|n| it.name.eq_ignore_ascii_case(n)))
                    })
                    .cloned()
                    .ok_or_else(|| {
                        JiraError::field("issuetype", "The issue type selected is invalid.")
                    })?
            }
        };
        let now = self.now();
        let mut issue = Issue {
            id: 0,
            key: String::new(),
            project_id: project.id.clone(),
            issue_type_id: issue_type.id.clone(),
            summary: String::new(),
            description: None,
            status_id: DEFAULT_STATUS.into(),
            priority_id: Some("3".into()),
            labels: Vec::new(),
            assignee: None,
            reporter: actor.into(),
            creator: actor.into(),
            created: now,
            updated: now,
            duedate: None,
            resolution: None,
            resolution_date: None,
            custom: BTreeMap::new(),
            comments: Vec::new(),
            changelog: Vec::new(),
            properties: BTreeMap::new(),
        };
        let mut edits = fields.clone();
        edits.remove("project");
        edits.remove("issuetype");
        self.apply_fields(api, &mut issue, &edits, body.get("update"))?;
        if issue.summary.trim().is_empty() {
            return Err(JiraError::field(
                "summary",
                "You must specify a summary of the issue.",
            ));
        }
        if let Some(props) = body.get("properties").and_then(Value::as_array) {
            for prop in props {
                if let (Some(k), Some(v)) =
                    (prop.get("key").and_then(Value::as_str), prop.get("value"))
                {
                    issue.properties.insert(k.to_string(), v.clone());
                }
            }
        }
        let project = self
            .projects
            .iter_mut()
            .find(|p| p.id == issue.project_id)
            .expect("project checked above");
        issue.key = format!("{}-{}", project.key, project.next_number);
        project.next_number += 1;
        self.next_issue_id += 1;
        issue.id = self.next_issue_id;
        self.keys.insert(issue.key.clone(), issue.id);
        let id = issue.id;
        self.issues.insert(id, issue);
        Ok(id)
    }

    /// `PUT /issue/{key}`: the changelog entry of what changed (None if nothing did).
    pub fn edit_issue(
        &mut self,
        api: Api,
        actor: &str,
        id: u64,
        body: &Value,
    ) -> Result<Option<ChangelogEntry>, JiraError> {
        let mut issue = self
            .issues
            .get(&id)
            .cloned()
            .ok_or_else(JiraError::issue_not_found)?;
        let empty = Map::new();
        let fields = body
            .get("fields")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for forbidden in ["project", "issuetype"] {
            if fields.contains_key(forbidden) {
                return Err(JiraError::cannot_set(forbidden));
            }
        }
        let before = issue.clone();
        self.apply_fields(api, &mut issue, fields, body.get("update"))?;
        if issue.summary.trim().is_empty() {
            return Err(JiraError::field(
                "summary",
                "You must specify a summary of the issue.",
            ));
        }
        let items = self.diff(&before, &issue);
        if let Some(props) = body.get("properties").and_then(Value::as_array) {
            for prop in props {
                if let (Some(k), Some(v)) =
                    (prop.get("key").and_then(Value::as_str), prop.get("value"))
                {
                    issue.properties.insert(k.to_string(), v.clone());
                }
            }
        }
        if items.is_empty() {
            self.issues.insert(id, issue);
            return Ok(None);
        }
        Ok(Some(self.commit_change(issue, actor, items)))
    }

    fn commit_change(
        &mut self,
        mut issue: Issue,
        actor: &str,
        items: Vec<ChangeItem>,
    ) -> ChangelogEntry {
        let now = self.now();
        issue.updated = now;
        let entry = ChangelogEntry {
            id: self.changelog_id(),
            author: actor.to_string(),
            created: now,
            items,
        };
        issue.changelog.push(entry.clone());
        self.issues.insert(issue.id, issue);
        entry
    }

    pub fn delete_issue(&mut self, id: u64) -> Result<Issue, JiraError> {
        let issue = self
            .issues
            .remove(&id)
            .ok_or_else(JiraError::issue_not_found)?;
        self.keys.remove(&issue.key);
        Ok(issue)
    }

    /// Transitions available from the issue's current status.
    pub fn available_transitions(&self, id: u64) -> Result<Vec<Transition>, JiraError> {
        let issue = self
            .issues
            .get(&id)
            .ok_or_else(JiraError::issue_not_found)?;
        Ok(self
            .transitions
            .iter()
            .filter(|t| t.from.contains(&issue.status_id))
            .cloned()
            .collect())
    }

    /// `POST /issue/{key}/transitions`.
    pub fn transition(
        &mut self,
        api: Api,
        actor: &str,
        id: u64,
        body: &Value,
    ) -> Result<ChangelogEntry, JiraError> {
        let transition_id = body
            .get("transition")
            .and_then(|t| t.get("id"))
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .ok_or_else(|| JiraError::new(400, "Missing transition id"))?;
        let available = self.available_transitions(id)?;
        let transition = available
            .iter()
            .find(|t| t.id == transition_id)
            .ok_or_else(|| {
                JiraError::new(
                    400,
                    format!("Transition id '{transition_id}' is not valid for this issue."),
                )
            })?;
        let mut issue = self
            .issues
            .get(&id)
            .cloned()
            .ok_or_else(JiraError::issue_not_found)?;
        let before = issue.clone();
        let mut fields = body
            .get("fields")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // The Done screen takes a resolution; nothing else is on a transition screen here.
        let resolution = fields.remove("resolution");
        self.apply_fields(api, &mut issue, &fields, body.get("update"))?;
        issue.status_id = transition.to.clone();
        let done = self
            .status(&transition.to)
            .is_some_and(|s| s.category == Category::Done);
        if done {
            let name = resolution
                .as_ref()
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("Done");
            issue.resolution = Some(name.to_string());
            issue.resolution_date = Some(self.now());
        } else {
            issue.resolution = None;
            issue.resolution_date = None;
        }
        let items = self.diff(&before, &issue);
        Ok(self.commit_change(issue, actor, items))
    }

    pub fn add_comment(
        &mut self,
        api: Api,
        actor: &str,
        id: u64,
        body: &Value,
    ) -> Result<u64, JiraError> {
        let text = comment_body(api, body)?;
        let now = self.now();
        self.next_comment_id += 1;
        let comment_id = self.next_comment_id;
        let issue = self
            .issues
            .get_mut(&id)
            .ok_or_else(JiraError::issue_not_found)?;
        issue.comments.push(Comment {
            id: comment_id,
            author: actor.into(),
            update_author: actor.into(),
            body: text,
            created: now,
            updated: now,
        });
        issue.updated = now;
        Ok(comment_id)
    }

    pub fn update_comment(
        &mut self,
        api: Api,
        actor: &str,
        id: u64,
        comment_id: u64,
        body: &Value,
    ) -> Result<(), JiraError> {
        let text = comment_body(api, body)?;
        let now = self.now();
        let issue = self
            .issues
            .get_mut(&id)
            .ok_or_else(JiraError::issue_not_found)?;
        let comment = issue
            .comments
            .iter_mut()
            .find(|c| c.id == comment_id)
            .ok_or_else(|| {
                JiraError::new(
                    404,
                    "Can not find a comment for the id: ".to_string()
                        + &comment_id.to_string()
                        + ".",
                )
            })?;
        comment.body = text;
        comment.update_author = actor.into();
        comment.updated = now;
        issue.updated = now;
        Ok(())
    }

    pub fn delete_comment(&mut self, id: u64, comment_id: u64) -> Result<Comment, JiraError> {
        let now = self.now();
        let issue = self
            .issues
            .get_mut(&id)
            .ok_or_else(JiraError::issue_not_found)?;
        let at = issue
            .comments
            .iter()
            .position(|c| c.id == comment_id)
            .ok_or_else(|| {
                JiraError::new(
                    404,
                    format!("Can not find a comment for the id: {comment_id}."),
                )
            })?;
        issue.updated = now;
        Ok(issue.comments.remove(at))
    }

    /// Apply a `fields` object and an `update` object to `issue` (not yet stored).
    fn apply_fields(
        &self,
        api: Api,
        issue: &mut Issue,
        fields: &Map<String, Value>,
        update: Option<&Value>,
    ) -> Result<(), JiraError> {
        for (name, value) in fields {
            self.set_field(api, issue, name, value)?;
        }
        let Some(update) = update.and_then(Value::as_object) else {
            return Ok(());
        };
        for (name, operations) in update {
            if fields.contains_key(name) {
                return Err(JiraError::field(
                    name,
                    format!("Field {name} specified in both 'fields' and 'update'."),
                ));
            }
            let operations = operations
                .as_array()
                .ok_or_else(|| JiraError::field(name, "Operations must be an array."))?;
            for operation in operations {
                let Some((verb, value)) = operation.as_object().and_then(|o| o.iter().next())
                else {
                    return Err(JiraError::field(name, "Operation must be an object."));
                };
                match (name.as_str(), verb.as_str()) {
                    (_, "set") => self.set_field(api, issue, name, value)?,
                    ("labels", "add") => {
                        let label = label(value)?;
                        if !issue.labels.contains(&label) {
                            issue.labels.push(label);
                        }
                    }
                    ("labels", "remove") => {
                        let label = label(value)?;
                        issue.labels.retain(|l| *l != label);
                    }
                    _ => {
                        return Err(JiraError::field(
                            name,
                            format!("Operation '{verb}' is not supported for field '{name}'."),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn set_field(
        &self,
        api: Api,
        issue: &mut Issue,
        name: &str,
        value: &Value,
    ) -> Result<(), JiraError> {
        match name {
            "summary" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| JiraError::field("summary", "Summary must be a string."))?;
                if text.chars().count() > 255 {
                    return Err(JiraError::field(
                        "summary",
                        "Summary must be less than 255 characters.",
                    ));
                }
                issue.summary = text.to_string();
            }
            "description" => issue.description = rich_text(api, "description", value)?,
            "priority" => {
                if value.is_null() {
                    issue.priority_id = None;
                } else {
                    let id = value.get("id").and_then(Value::as_str);
                    let name = value.get("name").and_then(Value::as_str);
                    let priority = self
                        .priorities
                        .iter()
                        .find(|p| {
                            Some(p.id.as_str()) == id
                                || name.is_some_and(|n| p.name.eq_ignore_ascii_case(n))
                        })
                        .ok_or_else(|| {
                            JiraError::field(
                                "priority",
                                "Specify the Priority (id or name) in the string format",
                            )
                        })?;
                    issue.priority_id = Some(priority.id.clone());
                }
            }
            "labels" => {
                let labels = value.as_array().ok_or_else(|| {
                    JiraError::field("labels", "Labels must be an array of strings.")
                })?;
                let mut out: Vec<String> = Vec::new();
                for l in labels {
                    let l = label(l)?;
                    if !out.contains(&l) {
                        out.push(l);
                    }
                }
                issue.labels = out;
            }
            "assignee" | "reporter" => {
                let account = if value.is_null() {
                    None
                } else {
                    let id = value.get("accountId").and_then(Value::as_str).unwrap_or("");
                    Some(
                        self.account(id)
                            .map(|a| a.account_id.clone())
                            .ok_or_else(|| {
                                JiraError::field(name, format!("User '{id}' does not exist."))
                            })?,
                    )
                };
                if name == "assignee" {
                    issue.assignee = account;
                } else {
                    issue.reporter = account
                        .ok_or_else(|| JiraError::field("reporter", "Reporter is required."))?;
                }
            }
            "duedate" => {
                issue.duedate = match value {
                    Value::Null => None,
                    Value::String(s) => {
                        Some(NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
                            JiraError::field(
                                "duedate",
                                "Error parsing date string: ".to_string() + s,
                            )
                        })?)
                    }
                    _ => return Err(JiraError::field("duedate", "Due date must be a string.")),
                }
            }
            "status" | "resolution" | "created" | "updated" | "creator" | "key" | "id" => {
                return Err(JiraError::cannot_set(name))
            }
            _ => {
                let field = self
                    .custom_fields
                    .iter()
                    .find(|f| f.id == name)
                    .ok_or_else(|| JiraError::cannot_set(name))?;
                let checked = check_custom(field, value)?;
                if checked.is_null() {
                    issue.custom.remove(name);
                } else {
                    issue.custom.insert(name.to_string(), checked);
                }
            }
        }
        Ok(())
    }

    /// The changelog items between two versions of an issue.
    fn diff(&self, before: &Issue, after: &Issue) -> Vec<ChangeItem> {
        let mut items = Vec::new();
        let mut push = |field: &str,
                        fieldtype: &'static str,
                        field_id: &str,
                        from: Option<String>,
                        from_string: Option<String>,
                        to: Option<String>,
                        to_string: Option<String>| {
            items.push(ChangeItem {
                field: field.into(),
                fieldtype,
                field_id: field_id.into(),
                from,
                from_string,
                to,
                to_string,
            })
        };
        if before.summary != after.summary {
            push(
                "summary",
                "jira",
                "summary",
                None,
                Some(before.summary.clone()),
                None,
                Some(after.summary.clone()),
            );
        }
        if before.description != after.description {
            let text = |d: &Option<Value>| d.as_ref().map(adf::to_text);
            push(
                "description",
                "jira",
                "description",
                None,
                text(&before.description),
                None,
                text(&after.description),
            );
        }
        if before.priority_id != after.priority_id {
            let name = |id: &Option<String>| {
                id.as_deref()
                    .and_then(|i| self.priority(i))
                    .map(|p| p.name.clone())
            };
            push(
                "priority",
                "jira",
                "priority",
                before.priority_id.clone(),
                name(&before.priority_id),
                after.priority_id.clone(),
                name(&after.priority_id),
            );
        }
        if before.status_id != after.status_id {
            let name = |id: &str| self.status(id).map(|s| s.name.clone());
            push(
                "status",
                "jira",
                "status",
                Some(before.status_id.clone()),
                name(&before.status_id),
                Some(after.status_id.clone()),
                name(&after.status_id),
            );
        }
        if before.resolution != after.resolution {
            push(
                "resolution",
                "jira",
                "resolution",
                None,
                before.resolution.clone(),
                None,
                after.resolution.clone(),
            );
        }
        if before.labels != after.labels {
            let joined = |l: &Vec<String>| (!l.is_empty()).then(|| l.join(" "));
            push(
                "labels",
                "jira",
                "labels",
                None,
                joined(&before.labels),
                None,
                joined(&after.labels),
            );
        }
        if before.assignee != after.assignee {
            let name = |id: &Option<String>| {
                id.as_deref()
                    .and_then(|i| self.account(i))
                    .map(|a| a.display_name.clone())
            };
            push(
                "assignee",
                "jira",
                "assignee",
                before.assignee.clone(),
                name(&before.assignee),
                after.assignee.clone(),
                name(&after.assignee),
            );
        }
        if before.reporter != after.reporter {
            let name = |id: &str| self.account(id).map(|a| a.display_name.clone());
            push(
                "reporter",
                "jira",
                "reporter",
                Some(before.reporter.clone()),
                name(&before.reporter),
                Some(after.reporter.clone()),
                name(&after.reporter),
            );
        }
        if before.duedate != after.duedate {
            let date = |d: &Option<NaiveDate>| d.map(|d| d.to_string());
            push(
                "duedate",
                "jira",
                "duedate",
                date(&before.duedate),
                date(&before.duedate),
                date(&after.duedate),
                date(&after.duedate),
            );
        }
        for field in &self.custom_fields {
            let (b, a) = (before.custom.get(&field.id), after.custom.get(&field.id));
            if b != a {
                let text = |v: Option<&Value>| {
                    v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                };
                push(
                    &field.name,
                    "custom",
                    &field.id,
                    None,
                    text(b),
                    None,
                    text(a),
                );
            }
        }
        items
    }
}

fn label(value: &Value) -> Result<String, JiraError> {
    let text = value
        .as_str()
        .ok_or_else(|| JiraError::field("labels", "Labels must be strings."))?;
    if text.is_empty() || text.contains(char::is_whitespace) {
        return Err(JiraError::field(
            "labels",
            "The label '".to_string() + text + "' contains spaces which is invalid.",
        ));
    }
    Ok(text.to_string())
}

/// Rich text as the API version carries it: ADF in v3 (a string is refused), a string in v2.
fn rich_text(api: Api, field: &str, value: &Value) -> Result<Option<Value>, JiraError> {
    match (api, value) {
        (_, Value::Null) => Ok(None),
        (Api::V3, v) if adf::is_document(v) => Ok(Some(v.clone())),
        (Api::V3, _) => Err(JiraError::field(
            field,
            "Operation value must be an Atlassian Document (see the Atlassian Document Format)",
        )),
        (Api::V2, Value::String(s)) => Ok(Some(adf::from_text(s))),
        (Api::V2, _) => Err(JiraError::field(field, "Operation value must be a string")),
    }
}

fn comment_body(api: Api, body: &Value) -> Result<Value, JiraError> {
    let value = body
        .get("body")
        .ok_or_else(|| JiraError::field("comment", "Comment body can not be empty!"))?;
    let doc = rich_text(api, "comment", value)?
        .ok_or_else(|| JiraError::field("comment", "Comment body can not be empty!"))?;
    if adf::to_text(&doc).trim().is_empty() {
        return Err(JiraError::field(
            "comment",
            "Comment body can not be empty!",
        ));
    }
    Ok(doc)
}

fn check_custom(field: &CustomField, value: &Value) -> Result<Value, JiraError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let bad = |what: &str| JiraError::field(&field.id, format!("Operation value must be {what}"));
    match field.kind {
        FieldKind::String => value
            .as_str()
            .map(|_| value.clone())
            .ok_or_else(|| bad("a string")),
        FieldKind::Number => value
            .as_f64()
            .map(|_| value.clone())
            .ok_or_else(|| bad("a number")),
        FieldKind::Date => {
            let s = value
                .as_str()
                .ok_or_else(|| bad("a date string (yyyy-MM-dd)"))?;
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| bad("a date string (yyyy-MM-dd)"))?;
            Ok(value.clone())
        }
        FieldKind::Datetime => {
            let s = value.as_str().ok_or_else(|| bad("a date-time string"))?;
            parse_jira_time(s).ok_or_else(|| bad("a date-time string"))?;
            Ok(value.clone())
        }
    }
}

/// Jira's timestamp format: `2024-12-29T08:41:23.303+0530` (offset without a colon).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

pub fn parse_jira_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut s = Store::new("http://sim".into(), "sim@example.com", "sim-token");
        s.seed_default();
        s
    }

    const ACTOR: &str = "5b10a2844c20165700ede21g";

    #[test]
    fn keys_count_per_project_and_ids_are_numeric() {
        let mut s = store();
        let body =
            json!({"fields":{"project":{"key":"SUP"},"issuetype":{"name":"Task"},"summary":"a"}});
        let a = s.create_issue(Api::V2, ACTOR, &body).unwrap();
        let b = s.create_issue(Api::V2, ACTOR, &body).unwrap();
        assert_eq!(s.issues[&a].key, "SUP-1");
        assert_eq!(s.issues[&b].key, "SUP-2");
        assert_eq!(s.find("sup-2").unwrap().id, b);
        assert_eq!(s.find(&a.to_string()).unwrap().key, "SUP-1");
    }

    #[test]
    fn an_edit_records_a_changelog_with_ids_and_display_strings() {
        let mut s = store();
        let id = s
            .create_issue(Api::V2, ACTOR, &json!({"fields":{"project":{"key":"SUP"},"issuetype":{"name":"Task"},"summary":"a"}}))
            .unwrap();
        let entry = s
            .edit_issue(
                Api::V2,
                ACTOR,
                id,
                &json!({"fields":{"priority":{"name":"Highest"},"customfield_10050":"500x"}}),
            )
            .unwrap()
            .unwrap();
        let priority = entry
            .items
            .iter()
            .find(|i| i.field_id == "priority")
            .unwrap();
        assert_eq!(
            (priority.from.as_deref(), priority.to_string.as_deref()),
            (Some("3"), Some("Highest"))
        );
        let custom = entry
            .items
            .iter()
            .find(|i| i.field_id == "customfield_10050")
            .unwrap();
        assert_eq!(
            (custom.field.as_str(), custom.fieldtype),
            ("Salesforce Case Id", "custom")
        );
        assert!(s
            .edit_issue(Api::V2, ACTOR, id, &json!({"fields":{"summary":"a"}}))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_clock_never_repeats_a_millisecond() {
        let mut s = store();
        let times: Vec<_> = (0..100).map(|_| s.now()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn jira_times_carry_an_offset_without_a_colon() {
        let t = Utc.timestamp_millis_opt(1_735_461_683_303).unwrap();
        assert_eq!(format_time(t), "2024-12-29T08:41:23.303+0000");
        assert_eq!(parse_jira_time("2024-12-29T14:11:23.303+0530"), Some(t));
    }
}
