//! The JQL the emulator understands: what polling, marker lookups and flow filters need.
//!
//! Fields: `project`, `key`/`issuekey`, `id`, `updated`, `created`, `duedate`, `status`,
//! `priority`, `issuetype`/`type`, `labels`, `assignee`, `reporter`, the free-text fields
//! `summary`, `description`, `comment` and `text`, and custom fields by id (`customfield_10050`,
//! `cf[10050]`) or quoted name. Operators `= != > >= < <= IN, NOT IN, IS, IS NOT` and the text
//! search `~ !~`; `AND`, `OR`, `NOT`, parentheses; `ORDER BY` field list. Anything else is refused
//! with a 400 in Jira's error shape: never a silently wrong answer.
//!
//! As in Jira Cloud, free-text fields (summary, description, comments, text custom fields) take
//! only `~`, `!~`, `IS` and `IS NOT`: `summary = x` is a 400. Text search follows Jira's "search
//! syntax for text fields": case-insensitive words, several terms joined by AND, a quoted phrase
//! matches its words in sequence, `*`/`?` wildcards inside or at the end of a word, and a
//! backslash makes the next character literal. Words are runs of letters and digits (Jira's
//! analyzer drops punctuation, so a text match is never exact: clients filter exact values
//! themselves). Not emulated: stemming, fuzzy `~`, boolean operators inside the search text —
//! the last two are refused rather than answered wrongly.
//!
//! Dates follow JQL: `"yyyy-MM-dd HH:mm"`, `"yyyy/MM/dd HH:mm"`, `"yyyy-MM-dd"`, `"yyyy/MM/dd"`, or
//! relative periods (`-15m`, `-1d`, `4w 2d`), interpreted in the caller's profile time zone —
//! UTC for every emulator account — at minute precision.

use std::cmp::Ordering;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

use super::store::{FieldKind, Issue, JiraError, Store};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn syntax(message: impl Into<String>) -> JiraError {
    JiraError::new(400, format!("Error in the JQL Query: {}", message.into()))
}

fn tokenize(jql: &str) -> Result<Vec<Token>, JiraError> {
    let chars: Vec<char> = jql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(syntax(format!(
                                "The quoted string '{text}' has not been completed. (line 1, character {i})"
                            )))
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => text.push('\n'),
                                Some('t') => text.push('\t'),
                                Some('r') => text.push('\r'),
                                Some(&e @ ('"' | '\'' | '\\' | ' ')) => text.push(e),
                                Some(other) => {
                                    return Err(syntax(format!(
                                        "The escape sequence '\\{other}' is illegal. (line 1, character {})",
                                        i + 1
                                    )))
                                }
                                None => return Err(syntax("The query ends in an escape character.")),
                            }
                            i += 2;
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            text.push(other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Quoted(text));
            }
            '=' => {
                tokens.push(Token::Op("="));
                i += 1;
            }
            '!' | '<' | '>' | '~' => {
                let next = chars.get(i + 1).copied();
                let op = match (c, next) {
                    ('!', Some('=')) => "!=",
                    ('!', Some('~')) => "!~",
                    ('<', Some('=')) => "<=",
                    ('>', Some('=')) => ">=",
                    ('<', _) => "<",
                    ('>', _) => ">",
                    ('~', _) => "~",
                    _ => {
                        return Err(syntax(format!(
                            "Expecting operator but got '!'. (line 1, character {})",
                            i + 1
                        )))
                    }
                };
                i += op.len();
                tokens.push(Token::Op(op));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(
                        chars[i],
                        '(' | ')' | ',' | '=' | '!' | '<' | '>' | '~' | '"' | '\''
                    )
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if let Some(number) = word
                    .strip_prefix("cf[")
                    .or_else(|| word.strip_prefix("CF["))
                    .and_then(|rest| rest.strip_suffix(']'))
                {
                    tokens.push(Token::Word(format!("customfield_{number}")));
                } else {
                    tokens.push(Token::Word(word));
                }
            }
        }
    }
    Ok(tokens)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    NotIn,
    Is,
    IsNot,
    /// `~`: text search.
    Contains,
    /// `!~`.
    NotContains,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    List(Vec<String>),
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Project,
    Key,
    Id,
    Updated,
    Created,
    DueDate,
    Status,
    Priority,
    IssueType,
    Labels,
    Assignee,
    Reporter,
    /// A free-text system field, searched with `~`.
    Text(TextField),
    Custom(String, FieldKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextField {
    Summary,
    Description,
    Comment,
    /// `text`: every text field of the issue at once.
    All,
}

#[derive(Debug, Clone)]
struct Clause {
    field: Field,
    op: Op,
    value: Value,
    /// The parsed search text of a `~`/`!~` clause.
    search: Option<TextQuery>,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Clause(Clause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortField {
    Updated,
    Created,
    Key,
    Id,
    DueDate,
}

/// A parsed, validated query.
#[derive(Debug, Clone)]
pub struct Query {
    filter: Option<Expr>,
    order: Vec<(SortField, bool)>,
    /// When relative dates were resolved: the query's "now".
    now: DateTime<Utc>,
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    store: &'a Store,
}

fn keyword(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn or(&mut self) -> Result<Expr, JiraError> {
        let mut parts = vec![self.and()?];
        while keyword(self.peek(), "or") {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Expr, JiraError> {
        let mut parts = vec![self.unary()?];
        while keyword(self.peek(), "and") {
            self.at += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, JiraError> {
        if keyword(self.peek(), "not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::RParen) {
                return Err(syntax("Expecting ')' before the end of the query."));
            }
            return Ok(inner);
        }
        self.clause().map(Expr::Clause)
    }

    fn clause(&mut self) -> Result<Clause, JiraError> {
        let name = match self.next() {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => w,
            other => {
                return Err(syntax(format!(
                    "Expecting a field name but got {}.",
                    describe(other.as_ref())
                )))
            }
        };
        let field = self.field(&name)?;
        let op = match self.next() {
            Some(Token::Op("=")) => Op::Eq,
            Some(Token::Op("!=")) => Op::Ne,
            Some(Token::Op(">")) => Op::Gt,
            Some(Token::Op(">=")) => Op::Ge,
            Some(Token::Op("<")) => Op::Lt,
            Some(Token::Op("<=")) => Op::Le,
            Some(Token::Op("~")) => Op::Contains,
            Some(Token::Op("!~")) => Op::NotContains,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("in") => Op::In,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("is") => {
                if keyword(self.peek(), "not") {
                    self.at += 1;
                    Op::IsNot
                } else {
                    Op::Is
                }
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("not") && keyword(self.peek(), "in") => {
                self.at += 1;
                Op::NotIn
            }
            other => {
                return Err(syntax(format!(
                    "Expecting operator but got {}. The valid operators are '=', '!=', '<', '>', \
                     '<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' and 'IS NOT'.",
                    describe(other.as_ref())
                )))
            }
        };
        let value = match op {
            Op::In | Op::NotIn => {
                if self.next() != Some(Token::LParen) {
                    return Err(syntax(format!("Expecting '(' after '{name} IN'.")));
                }
                let mut items = Vec::new();
                loop {
                    items.push(self.scalar(&name)?);
                    match self.next() {
                        Some(Token::Comma) => continue,
                        Some(Token::RParen) => break,
                        other => {
                            return Err(syntax(format!(
                                "Expecting ',' or ')' but got {}.",
                                describe(other.as_ref())
                            )))
                        }
                    }
                }
                Value::List(items)
            }
            Op::Is | Op::IsNot => {
                if keyword(self.peek(), "empty") || keyword(self.peek(), "null") {
                    self.at += 1;
                    Value::Empty
                } else {
                    return Err(syntax(format!(
                        "Expecting EMPTY or NULL after '{name} IS' but got {}.",
                        describe(self.peek())
                    )));
                }
            }
            _ => {
                if keyword(self.peek(), "empty") || keyword(self.peek(), "null") {
                    self.at += 1;
                    Value::Empty
                } else {
                    Value::Text(self.scalar(&name)?)
                }
            }
        };
        check_operator(&name, &field, op, &value)?;
        let search = match (&op, &value) {
            (Op::Contains | Op::NotContains, Value::Text(text)) => {
                Some(TextQuery::parse(text).map_err(|reason| {
                    JiraError::new(
                        400,
                        format!(
                            "The text query '{text}' for field '{name}' is not valid: {reason}"
                        ),
                    )
                })?)
            }
            _ => None,
        };
        Ok(Clause {
            field,
            op,
            value,
            search,
        })
    }

    fn scalar(&mut self, field: &str) -> Result<String, JiraError> {
        match self.next() {
            Some(Token::Word(w)) => {
                if self.peek() == Some(&Token::LParen) {
                    return Err(syntax(format!("Unable to find JQL function '{w}()'.")));
                }
                Ok(w)
            }
            Some(Token::Quoted(q)) => Ok(q),
            other => Err(syntax(format!(
                "Expecting a value for '{field}' but got {}.",
                describe(other.as_ref())
            ))),
        }
    }

    fn field(&self, name: &str) -> Result<Field, JiraError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "project" => Field::Project,
            "key" | "issuekey" | "issue" => Field::Key,
            "id" => Field::Id,
            "updated" | "updateddate" => Field::Updated,
            "created" | "createddate" => Field::Created,
            "duedate" | "due" => Field::DueDate,
            "status" => Field::Status,
            "priority" => Field::Priority,
            "issuetype" | "type" => Field::IssueType,
            "labels" => Field::Labels,
            "assignee" => Field::Assignee,
            "reporter" => Field::Reporter,
            "summary" => Field::Text(TextField::Summary),
            "description" => Field::Text(TextField::Description),
            "comment" => Field::Text(TextField::Comment),
            "text" => Field::Text(TextField::All),
            _ => match self.store.custom_field(name) {
                Some(f) => Field::Custom(f.id.clone(), f.kind),
                None => {
                    return Err(JiraError::new(
                        400,
                        format!(
                        "Field '{name}' does not exist or you do not have permission to view it."
                    ),
                    ))
                }
            },
        })
    }
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end of the query".into(),
        Some(Token::Word(w)) | Some(Token::Quoted(w)) => format!("'{w}'"),
        Some(Token::Op(op)) => format!("'{op}'"),
        Some(Token::LParen) => "'('".into(),
        Some(Token::RParen) => "')'".into(),
        Some(Token::Comma) => "','".into(),
    }
}

fn check_operator(name: &str, field: &Field, op: Op, value: &Value) -> Result<(), JiraError> {
    let ordered = matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le);
    let comparable = matches!(
        field,
        Field::Id | Field::Updated | Field::Created | Field::DueDate
    ) || matches!(
        field,
        Field::Custom(_, FieldKind::Number | FieldKind::Date | FieldKind::Datetime)
    );
    let emptiable = !matches!(
        field,
        Field::Project
            | Field::Key
            | Field::Id
            | Field::Updated
            | Field::Created
            | Field::Status
            | Field::IssueType
    );
    // Jira's free-text fields (and text custom fields) take only `~ !~ IS IS NOT`, and only
    // they take `~`.
    let textual = matches!(field, Field::Text(_) | Field::Custom(_, FieldKind::String));
    let text_op = matches!(op, Op::Contains | Op::NotContains);
    let allowed = match op {
        _ if textual => text_op || matches!(op, Op::Is | Op::IsNot),
        _ if text_op => false,
        _ if ordered => comparable,
        Op::Is | Op::IsNot => emptiable,
        _ => !matches!(value, Value::Empty) || emptiable,
    };
    if allowed {
        Ok(())
    } else {
        let symbol = match op {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::Is => "is",
            Op::IsNot => "is not",
            Op::Contains => "~",
            Op::NotContains => "!~",
        };
        Err(JiraError::new(
            400,
            format!("The operator '{symbol}' is not supported by the '{name}' field."),
        ))
    }
}

/// Parse and validate `jql` against the site's fields and values.
pub fn parse(jql: &str, store: &Store) -> Result<Query, JiraError> {
    let tokens = tokenize(jql)?;
    let order_at = tokens
        .windows(2)
        .position(|w| keyword(w.first(), "order") && keyword(w.get(1), "by"));
    let (filter_tokens, order_tokens) = match order_at {
        Some(at) => (tokens[..at].to_vec(), tokens[at + 2..].to_vec()),
        None => (tokens, Vec::new()),
    };
    let mut parser = Parser {
        tokens: filter_tokens,
        at: 0,
        store,
    };
    let filter = if parser.tokens.is_empty() {
        None
    } else {
        let expr = parser.or()?;
        if let Some(extra) = parser.peek() {
            return Err(syntax(format!(
                "Expecting either 'OR' or 'AND' but got {}.",
                describe(Some(extra))
            )));
        }
        Some(expr)
    };
    let order = parse_order(&order_tokens, order_at.is_some())?;
    let query = Query {
        filter,
        order,
        now: Utc::now(),
    };
    if let Some(filter) = &query.filter {
        validate(filter, store, query.now)?;
    }
    Ok(query)
}

fn parse_order(tokens: &[Token], present: bool) -> Result<Vec<(SortField, bool)>, JiraError> {
    if tokens.is_empty() {
        return if present {
            Err(syntax("Expecting a field name after 'ORDER BY'."))
        } else {
            Ok(Vec::new())
        };
    }
    let mut order = Vec::new();
    for part in tokens.split(|t| *t == Token::Comma) {
        let (name, direction) = match part {
            [Token::Word(name) | Token::Quoted(name)] => (name, None),
            [Token::Word(name) | Token::Quoted(name), Token::Word(d)] => (name, Some(d)),
            _ => {
                return Err(syntax(
                    "Expecting a field name and an optional ASC or DESC in ORDER BY.",
                ))
            }
        };
        let field = match name.to_ascii_lowercase().as_str() {
            "updated" | "updateddate" => SortField::Updated,
            "created" | "createddate" => SortField::Created,
            "key" | "issuekey" => SortField::Key,
            "id" => SortField::Id,
            "duedate" => SortField::DueDate,
            _ => {
                return Err(syntax(format!(
                    "ordering by '{name}' is not supported by this emulator (use updated, created, key, id or duedate)."
                )))
            }
        };
        let descending = match direction.map(|d| d.to_ascii_lowercase()) {
            None => false,
            Some(d) if d == "asc" => false,
            Some(d) if d == "desc" => true,
            Some(d) => return Err(syntax(format!("Expecting 'ASC' or 'DESC' but got '{d}'."))),
        };
        order.push((field, descending));
    }
    if order.len() > 7 {
        return Err(syntax("At most 7 fields can be used in ORDER BY."));
    }
    Ok(order)
}

fn values(value: &Value) -> Vec<&str> {
    match value {
        Value::Text(t) => vec![t.as_str()],
        Value::List(items) => items.iter().map(String::as_str).collect(),
        Value::Empty => Vec::new(),
    }
}

/// Unknown projects, statuses, keys … are errors in Jira, not empty results.
fn validate(expr: &Expr, store: &Store, now: DateTime<Utc>) -> Result<(), JiraError> {
    match expr {
        Expr::And(parts) | Expr::Or(parts) => {
            parts.iter().try_for_each(|p| validate(p, store, now))
        }
        Expr::Not(inner) => validate(inner, store, now),
        Expr::Clause(clause) => {
            let missing = |name: &str, v: &str| {
                JiraError::new(
                    400,
                    format!("The value '{v}' does not exist for the field '{name}'."),
                )
            };
            for v in values(&clause.value) {
                match &clause.field {
                    Field::Project
                        if store.project(v).is_none()
                            && !store
                                .projects
                                .iter()
                                .any(|p| p.name.eq_ignore_ascii_case(v)) =>
                    {
                        return Err(missing("project", v))
                    }
                    Field::Status
                        if !store
                            .statuses
                            .iter()
                            .any(|s| s.id == v || s.name.eq_ignore_ascii_case(v)) =>
                    {
                        return Err(missing("status", v))
                    }
                    Field::Priority
                        if !store
                            .priorities
                            .iter()
                            .any(|p| p.id == v || p.name.eq_ignore_ascii_case(v)) =>
                    {
                        return Err(missing("priority", v))
                    }
                    Field::IssueType
                        if !store
                            .issue_types
                            .iter()
                            .any(|t| t.id == v || t.name.eq_ignore_ascii_case(v)) =>
                    {
                        return Err(missing("issuetype", v))
                    }
                    Field::Key | Field::Id if store.resolve(v).is_none() && v.contains('-') => {
                        return Err(JiraError::new(
                            400,
                            format!("An issue with key '{v}' does not exist for field 'key'."),
                        ))
                    }
                    Field::Key | Field::Id if !v.contains('-') && v.parse::<u64>().is_err() => {
                        return Err(JiraError::new(
                            400,
                            format!("The issue key '{v}' for field 'key' is invalid."),
                        ))
                    }
                    Field::Updated | Field::Created | Field::DueDate => {
                        parse_date(v, now).ok_or_else(|| invalid_date(v, &clause.field))?;
                    }
                    Field::Custom(_, FieldKind::Datetime | FieldKind::Date) => {
                        parse_date(v, now).ok_or_else(|| invalid_date(v, &clause.field))?;
                    }
                    Field::Custom(id, FieldKind::Number) if v.parse::<f64>().is_err() => {
                        return Err(JiraError::new(
                            400,
                            format!("The value '{v}' is not a valid number for field '{id}'."),
                        ))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

fn invalid_date(v: &str, field: &Field) -> JiraError {
    let name = match field {
        Field::Updated => "updated".to_string(),
        Field::Created => "created".to_string(),
        Field::DueDate => "duedate".to_string(),
        Field::Custom(id, _) => id.clone(),
        _ => "date".to_string(),
    };
    JiraError::new(
        400,
        format!(
            "Date value '{v}' for field '{name}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', \
             'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
        ),
    )
}

/// A JQL date in the (UTC) profile zone, or a relative period from `now`.
fn parse_date(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    for format in ["%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    for format in ["%Y-%m-%d", "%Y/%m/%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(text, format) {
            return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        }
    }
    // Relative dates are minute-precise too. Out-of-range periods are invalid, not a panic.
    let t = now.checked_add_signed(relative(text)?)?;
    chrono::DurationRound::duration_trunc(t, Duration::minutes(1)).ok()
}

/// `-15m`, `-1d`, `4w 2d`, `+2h`: a signed sum of periods.
fn relative(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let mut total = Duration::zero();
    let mut any = false;
    for part in rest.split_whitespace() {
        // Byte slicing is safe: the unit is one ASCII character.
        let (count, period): (&str, fn(i64) -> Option<Duration>) =
            if let Some(n) = part.strip_suffix('w') {
                (n, Duration::try_weeks)
            } else if let Some(n) = part.strip_suffix('d') {
                (n, Duration::try_days)
            } else if let Some(n) = part.strip_suffix('h') {
                (n, Duration::try_hours)
            } else if let Some(n) = part.strip_suffix('m') {
                (n, Duration::try_minutes)
            } else {
                return None;
            };
        let n: i64 = count.parse().ok()?;
        total = total.checked_add(&period(n)?)?;
        any = true;
    }
    if !any {
        return None;
    }
    if sign < 0 {
        Duration::zero().checked_sub(&total)
    } else {
        Some(total)
    }
}

impl Query {
    /// Whether the query has a restriction: `search/jql` refuses unbounded queries.
    pub fn is_bounded(&self) -> bool {
        self.filter.is_some()
    }

    pub fn matches(&self, issue: &Issue, store: &Store) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| eval(f, issue, store, self.now))
    }

    /// Sort issues as the query's ORDER BY says (ties by id, ascending).
    pub fn sort(&self, issues: &mut [&Issue]) {
        issues.sort_by(|a, b| {
            for (field, descending) in &self.order {
                let ordering = match field {
                    SortField::Updated => a.updated.cmp(&b.updated),
                    SortField::Created => a.created.cmp(&b.created),
                    SortField::Key => key_order(&a.key, &b.key),
                    SortField::Id => a.id.cmp(&b.id),
                    SortField::DueDate => a.duedate.cmp(&b.duedate),
                };
                let ordering = if *descending {
                    ordering.reverse()
                } else {
                    ordering
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            if self.order.is_empty() {
                // Jira's default order for a query without ORDER BY: newest key first.
                return key_order(&b.key, &a.key);
            }
            a.id.cmp(&b.id)
        });
    }
}

fn key_order(a: &str, b: &str) -> Ordering {
    let split = |k: &str| {
        let (p, n) = k.rsplit_once('-').unwrap_or((k, "0"));
        (p.to_string(), n.parse::<u64>().unwrap_or(0))
    };
    split(a).cmp(&split(b))
}

fn eval(expr: &Expr, issue: &Issue, store: &Store, now: DateTime<Utc>) -> bool {
    match expr {
        Expr::And(parts) => parts.iter().all(|p| eval(p, issue, store, now)),
        Expr::Or(parts) => parts.iter().any(|p| eval(p, issue, store, now)),
        Expr::Not(inner) => !eval(inner, issue, store, now),
        Expr::Clause(clause) => eval_clause(clause, issue, store, now),
    }
}

fn eval_clause(clause: &Clause, issue: &Issue, store: &Store, now: DateTime<Utc>) -> bool {
    let wanted = values(&clause.value);
    // The issue's value(s) for the field, as comparable strings; empty when unset.
    let actual: Vec<String> = match &clause.field {
        Field::Project => store
            .projects
            .iter()
            .filter(|p| p.id == issue.project_id)
            .flat_map(|p| {
                [
                    p.id.clone(),
                    p.key.to_ascii_lowercase(),
                    p.name.to_ascii_lowercase(),
                ]
            })
            .collect(),
        // `id`, `key`, `issuekey` and `issue` name one field in JQL: a key or a numeric id.
        Field::Key | Field::Id => vec![issue.key.to_ascii_lowercase(), issue.id.to_string()],
        Field::Status => store
            .status(&issue.status_id)
            .map(|s| vec![s.id.clone(), s.name.to_ascii_lowercase()])
            .unwrap_or_default(),
        Field::Priority => issue
            .priority_id
            .as_deref()
            .and_then(|id| store.priority(id))
            .map(|p| vec![p.id.clone(), p.name.to_ascii_lowercase()])
            .unwrap_or_default(),
        Field::IssueType => store
            .issue_type(&issue.issue_type_id)
            .map(|t| vec![t.id.clone(), t.name.to_ascii_lowercase()])
            .unwrap_or_default(),
        Field::Labels => issue
            .labels
            .iter()
            .map(|l| l.to_ascii_lowercase())
            .collect(),
        Field::Assignee | Field::Reporter => {
            let who = if clause.field == Field::Assignee {
                issue.assignee.as_deref()
            } else {
                Some(issue.reporter.as_str())
            };
            who.and_then(|id| store.account(id))
                .map(|a| {
                    vec![
                        a.account_id.to_ascii_lowercase(),
                        a.email.to_ascii_lowercase(),
                    ]
                })
                .unwrap_or_default()
        }
        Field::Updated | Field::Created | Field::DueDate => Vec::new(),
        Field::Text(which) => text_values(*which, issue, store),
        Field::Custom(id, _) => issue
            .custom
            .get(id)
            .map(|v| {
                vec![v
                    .as_str()
                    .map_or_else(|| v.to_string(), str::to_ascii_lowercase)]
            })
            .unwrap_or_default(),
    };
    let time = match &clause.field {
        Field::Updated => Some(issue.updated),
        Field::Created => Some(issue.created),
        Field::DueDate => issue
            .duedate
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc()),
        Field::Custom(id, FieldKind::Date | FieldKind::Datetime) => issue
            .custom
            .get(id)
            .and_then(|v| v.as_str())
            .and_then(|s| super::store::parse_jira_time(s).or_else(|| parse_date(s, now))),
        _ => None,
    };
    let number = match &clause.field {
        Field::Id => Some(issue.id as f64),
        Field::Custom(id, FieldKind::Number) => issue.custom.get(id).and_then(|v| v.as_f64()),
        _ => None,
    };
    let is_empty = actual.is_empty() && time.is_none() && number.is_none();
    let equals = |w: &str| {
        if let Some(t) = time {
            return parse_date(w, now) == Some(t);
        }
        if let (Some(n), Ok(v)) = (number, w.parse::<f64>()) {
            return n == v;
        }
        let w = w.to_ascii_lowercase();
        actual.contains(&w)
    };
    let compare = |w: &str| -> Option<Ordering> {
        if let Some(t) = time {
            return parse_date(w, now).map(|v| t.cmp(&v));
        }
        number
            .zip(w.parse::<f64>().ok())
            .and_then(|(n, v)| n.partial_cmp(&v))
    };
    match (clause.op, &clause.value) {
        (Op::Is, _) | (Op::Eq | Op::Contains, Value::Empty) => is_empty,
        (Op::IsNot, _) | (Op::Ne | Op::NotContains, Value::Empty) => !is_empty,
        (Op::Contains, _) => clause.search.as_ref().is_some_and(|q| q.matches(&actual)),
        // Like Jira, `!~` does not select issues whose field is empty.
        (Op::NotContains, _) => {
            !is_empty && !clause.search.as_ref().is_some_and(|q| q.matches(&actual))
        }
        (Op::Eq, _) | (Op::In, _) => wanted.iter().any(|w| equals(w)),
        (Op::Ne, _) | (Op::NotIn, _) => !is_empty && !wanted.iter().any(|w| equals(w)),
        (Op::Gt, _) => wanted.first().and_then(|w| compare(w)) == Some(Ordering::Greater),
        (Op::Ge, _) => matches!(
            wanted.first().and_then(|w| compare(w)),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        (Op::Lt, _) => wanted.first().and_then(|w| compare(w)) == Some(Ordering::Less),
        (Op::Le, _) => matches!(
            wanted.first().and_then(|w| compare(w)),
            Some(Ordering::Less | Ordering::Equal)
        ),
    }
}

/// The text of a free-text field (all of them for `text`), as the index would see it.
fn text_values(which: TextField, issue: &Issue, store: &Store) -> Vec<String> {
    let summary = || vec![issue.summary.clone()];
    let description = || {
        issue
            .description
            .as_ref()
            .map(|d| vec![crate::adf::to_text(d)])
            .unwrap_or_default()
    };
    let comments = || {
        issue
            .comments
            .iter()
            .map(|c| crate::adf::to_text(&c.body))
            .collect::<Vec<_>>()
    };
    let mut out = match which {
        TextField::Summary => summary(),
        TextField::Description => description(),
        TextField::Comment => comments(),
        TextField::All => {
            let mut all = summary();
            all.extend(description());
            all.extend(comments());
            all.extend(
                store
                    .custom_fields
                    .iter()
                    .filter(|f| f.kind == FieldKind::String)
                    .filter_map(|f| issue.custom.get(&f.id))
                    .filter_map(|v| v.as_str().map(str::to_string)),
            );
            all
        }
    };
    out.retain(|t| !t.is_empty());
    out
}

/// One term of a text search: the words of a phrase (or of a plain term, which the analyzer
/// splits the same way), or a wildcard pattern matched against single words.
#[derive(Debug, Clone, PartialEq)]
enum TextTerm {
    Phrase(Vec<String>),
    Wildcard(Vec<PatternChar>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PatternChar {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Any,
}

/// The search text of a `~` clause (after JQL string unescaping), parsed once.
#[derive(Debug, Clone, PartialEq)]
struct TextQuery {
    terms: Vec<TextTerm>,
}

/// Words as Jira's analyzer indexes them: runs of letters and digits, case-folded.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl TextQuery {
    fn parse(text: &str) -> Result<TextQuery, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut terms = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            if c == '"' {
                // A phrase: its words in sequence; wildcards inside a phrase are literal text,
                // as Jira does not support them there.
                let mut phrase = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("the phrase is not closed with '\"'.".into()),
                        Some('\\') => {
                            let escaped = chars
                                .get(i + 1)
                                .ok_or("the search text ends in an escape character.")?;
                            phrase.push(*escaped);
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            phrase.push(other);
                            i += 1;
                        }
                    }
                }
                terms.push(TextTerm::Phrase(words(&phrase)));
                continue;
            }
            // A single term, up to whitespace or an opening quote.
            let start = i;
            let mut pattern = Vec::new();
            let mut wildcard = false;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
                let c = chars[i];
                match c {
                    '\\' => {
                        let escaped = chars
                            .get(i + 1)
                            .ok_or("the search text ends in an escape character.")?;
                        pattern.push(PatternChar::Literal(*escaped));
                        i += 2;
                        continue;
                    }
                    '*' | '?' if i == start => {
                        return Err(format!(
                            "'{c}' is not allowed as the first character of a search term."
                        ))
                    }
                    '*' => {
                        wildcard = true;
                        pattern.push(PatternChar::Any);
                    }
                    '?' => {
                        wildcard = true;
                        pattern.push(PatternChar::One);
                    }
                    '+' | '-' | '!' if i == start => {
                        return Err(format!(
                            "the '{c}' operator is not supported by this emulator; escape it \
                             with '\\' to search for it."
                        ))
                    }
                    '&' | '|' | '(' | ')' | '{' | '}' | '[' | ']' | '^' | '~' | ':' | '/' => {
                        return Err(format!(
                            "the reserved character '{c}' must be escaped with '\\' (this \
                             emulator does not support it as an operator)."
                        ))
                    }
                    other => pattern.push(PatternChar::Literal(other)),
                }
                i += 1;
            }
            let raw: String = chars[start..i].iter().collect();
            if matches!(raw.as_str(), "AND" | "OR" | "NOT" | "&&" | "||") {
                return Err(format!(
                    "the boolean operator '{raw}' is not supported by this emulator."
                ));
            }
            if wildcard {
                let pattern = pattern
                    .into_iter()
                    .flat_map(|p| match p {
                        PatternChar::Literal(c) => c
                            .to_lowercase()
                            .map(PatternChar::Literal)
                            .collect::<Vec<_>>(),
                        other => vec![other],
                    })
                    .collect();
                terms.push(TextTerm::Wildcard(pattern));
            } else {
                let literal: String = pattern
                    .iter()
                    .filter_map(|p| match p {
                        PatternChar::Literal(c) => Some(*c),
                        _ => None,
                    })
                    .collect();
                terms.push(TextTerm::Phrase(words(&literal)));
            }
        }
        // A term of punctuation only indexes as nothing and constrains nothing (unconfirmed:
        // Jira may refuse such a query instead).
        terms.retain(|t| !matches!(t, TextTerm::Phrase(w) if w.is_empty()));
        Ok(TextQuery { terms })
    }

    /// Every term is found in one of `values` (terms are joined by AND). A search with no
    /// words matches nothing.
    fn matches(&self, values: &[String]) -> bool {
        if self.terms.is_empty() {
            return false;
        }
        let indexed: Vec<Vec<String>> = values.iter().map(|v| words(v)).collect();
        self.terms.iter().all(|term| {
            indexed.iter().any(|w| match term {
                TextTerm::Phrase(phrase) => w.windows(phrase.len()).any(|window| window == phrase),
                TextTerm::Wildcard(pattern) => w.iter().any(|word| glob(pattern, word)),
            })
        })
    }
}

fn glob(pattern: &[PatternChar], word: &str) -> bool {
    let word: Vec<char> = word.chars().collect();
    fn at(p: &[PatternChar], w: &[char]) -> bool {
        match p.split_first() {
            None => w.is_empty(),
            Some((PatternChar::Any, rest)) => (0..=w.len()).any(|skip| at(rest, &w[skip..])),
            Some((PatternChar::One, rest)) => !w.is_empty() && at(rest, &w[1..]),
            Some((PatternChar::Literal(c), rest)) => w.first() == Some(c) && at(rest, &w[1..]),
        }
    }
    at(pattern, &word)
}

#[cfg(test)]
mod tests {
    use super::super::store::Api;
    use super::*;
    use serde_json::json;

    const ACTOR: &str = "5b10a2844c20165700ede21g";

    fn site() -> Store {
        let mut s = Store::new("http://sim".into(), "sim@example.com", "t");
        s.seed_default();
        s.add_project("OPS", "Operations");
        for (project, summary, labels, marker) in [
            ("SUP", "printer", vec!["hw"], Some("500A")),
            ("SUP", "laptop", vec!["hw", "urgent"], None),
            ("OPS", "server", vec![], Some("500C")),
        ] {
            let mut fields = json!({"project":{"key":project},"issuetype":{"name":"Task"},"summary":summary,"labels":labels});
            if let Some(m) = marker {
                fields["customfield_10050"] = json!(m);
            }
            s.create_issue(Api::V2, ACTOR, &json!({ "fields": fields }))
                .unwrap();
        }
        s
    }

    fn keys(jql: &str, store: &Store) -> Vec<String> {
        let query = parse(jql, store).unwrap_or_else(|e| panic!("{jql}: {e:?}"));
        let mut found: Vec<&Issue> = store
            .issues
            .values()
            .filter(|i| query.matches(i, store))
            .collect();
        query.sort(&mut found);
        found.iter().map(|i| i.key.clone()).collect()
    }

    fn error(jql: &str, store: &Store) -> String {
        parse(jql, store).unwrap_err().messages.join(" ")
    }

    #[test]
    fn polling_queries_select_and_order_what_they_should() {
        let s = site();
        assert_eq!(
            keys("project = SUP ORDER BY updated ASC, key ASC", &s),
            ["SUP-1", "SUP-2"]
        );
        assert_eq!(
            keys(
                "project = sup AND updated >= \"2000-01-01 00:00\" order by key desc",
                &s
            ),
            ["SUP-2", "SUP-1"]
        );
        assert_eq!(
            keys("updated >= -1d ORDER BY id", &s),
            ["SUP-1", "SUP-2", "OPS-1"]
        );
        assert!(keys("updated < \"2000/01/01\"", &s).is_empty());
    }

    #[test]
    fn keys_labels_custom_fields_and_boolean_logic_work() {
        let s = site();
        assert_eq!(
            keys("key in (SUP-2, OPS-1) ORDER BY key", &s),
            ["OPS-1", "SUP-2"]
        );
        assert_eq!(keys("labels = urgent", &s), ["SUP-2"]);
        assert_eq!(keys("labels IS EMPTY", &s), ["OPS-1"]);
        assert_eq!(keys("cf[10050] ~ \"500A\"", &s), ["SUP-1"]);
        assert_eq!(
            keys("\"Salesforce Case Id\" IS NOT EMPTY ORDER BY key", &s),
            ["OPS-1", "SUP-1"]
        );
        assert_eq!(
            keys(
                "project = OPS OR (labels = hw AND NOT labels = urgent) ORDER BY key",
                &s
            ),
            ["OPS-1", "SUP-1"]
        );
        assert_eq!(
            keys(
                "status = \"To Do\" AND priority = Medium AND type = Task ORDER BY id",
                &s
            )
            .len(),
            3
        );
    }

    #[test]
    fn unsupported_or_wrong_jql_is_refused_in_jiras_words() {
        let s = site();
        assert!(error("project = NOPE", &s)
            .contains("The value 'NOPE' does not exist for the field 'project'."));
        assert!(error("colour = red", &s).contains("Field 'colour' does not exist"));
        assert!(error("summary = printer", &s)
            .contains("The operator '=' is not supported by the 'summary' field."));
        assert!(error("assignee = currentUser()", &s)
            .contains("Unable to find JQL function 'currentUser()'"));
        assert!(error("updated >= \"15/01/2024\"", &s)
            .contains("Date value '15/01/2024' for field 'updated' is invalid"));
        assert!(error("project = SUP AND", &s).contains("Expecting a field name"));
        assert!(error("project SUP", &s).contains("Expecting operator"));
        assert!(error("labels > a", &s)
            .contains("The operator '>' is not supported by the 'labels' field."));
        assert!(error("key = SUP-99", &s).contains("An issue with key 'SUP-99' does not exist"));
        assert!(error("project = \"SUP", &s).contains("has not been completed"));
        assert!(error("updated >= \"-1é\"", &s).contains("is invalid"));
        assert!(error("updated >= \"-99999999999999w\"", &s).contains("is invalid"));
        assert!(error("project = SUP ORDER BY colour", &s).contains("ordering by 'colour'"));
    }

    #[test]
    fn quoted_values_take_escapes_and_relative_dates_are_periods() {
        let s = site();
        assert!(parse(r#"cf[10050] ~ "a \"quoted\" \\ value""#, &s).is_ok());
        assert_eq!(relative("-15m"), Some(Duration::minutes(-15)));
        assert_eq!(relative("4w 2d"), Some(Duration::days(30)));
        assert_eq!(relative("soon"), None);
        assert_eq!(relative("-1é"), None);
        assert_eq!(relative("-99999999999999w"), None);
        let now = Utc::now();
        assert_eq!(parse_date("-9223372036854775807m", now), None);
    }

    #[test]
    fn an_order_by_alone_is_unbounded() {
        let s = site();
        assert!(!parse("ORDER BY key DESC", &s).unwrap().is_bounded());
        assert!(parse("project = SUP", &s).unwrap().is_bounded());
    }

    fn site_with_markers(markers: &[&str]) -> Store {
        let mut s = Store::new("http://sim".into(), "sim@example.com", "t");
        s.seed_default();
        for (i, marker) in markers.iter().enumerate() {
            let fields = json!({"project":{"key":"SUP"},"issuetype":{"name":"Task"},
                "summary": format!("issue {i}"), "customfield_10050": marker});
            s.create_issue(Api::V2, ACTOR, &json!({ "fields": fields }))
                .unwrap();
        }
        s
    }

    #[test]
    fn free_text_fields_refuse_equality_like_jira_cloud() {
        let s = site();
        for (jql, op, field) in [
            ("summary = printer", "=", "summary"),
            ("description != x", "!=", "description"),
            ("cf[10050] = \"500A\"", "=", "customfield_10050"),
            (
                "\"Salesforce Case Id\" in (a, b)",
                "in",
                "Salesforce Case Id",
            ),
            ("project ~ SUP", "~", "project"),
            ("labels !~ hw", "!~", "labels"),
        ] {
            assert!(
                error(jql, &s).contains(&format!(
                    "The operator '{op}' is not supported by the '{field}' field."
                )),
                "{jql}: {}",
                error(jql, &s)
            );
        }
        // Emptiness checks stay valid on text fields.
        assert_eq!(keys("cf[10050] IS EMPTY", &s), ["SUP-2"]);
    }

    #[test]
    fn text_search_matches_words_case_insensitively_and_joins_terms_with_and() {
        let s = site();
        assert_eq!(keys("summary ~ PRINTER", &s), ["SUP-1"]);
        assert_eq!(keys("text ~ \"500c\"", &s), ["OPS-1"]);
        assert_eq!(keys("summary ~ \"print*\"", &s), ["SUP-1"]);
        assert_eq!(keys("summary ~ \"l?ptop\"", &s), ["SUP-2"]);
        assert_eq!(
            keys("summary !~ printer ORDER BY key", &s),
            ["OPS-1", "SUP-2"]
        );
        let s = site_with_markers(&["alpha beta", "beta gamma alpha"]);
        // Plain terms: all words, any order.
        assert_eq!(
            keys("cf[10050] ~ \"alpha beta\" ORDER BY key", &s),
            ["SUP-1", "SUP-2"]
        );
        // A quoted phrase: the words in sequence.
        assert_eq!(keys(r#"cf[10050] ~ "\"alpha beta\"""#, &s), ["SUP-1"]);
        assert_eq!(keys(r#"cf[10050] ~ "\"gamma alpha\"""#, &s), ["SUP-2"]);
    }

    #[test]
    fn escaped_special_characters_are_literal_text() {
        let s = site_with_markers(&[") OR 1=1 --", "a*b", "a+b", "OR 1 1 x"]);
        // Escaped reserved characters parse; punctuation is not indexed, so the phrase matches
        // every value with the same words (clients must compare exactly themselves).
        assert_eq!(
            keys(r#"cf[10050] ~ "\"\\) OR 1=1 \\-\\-\"" ORDER BY key"#, &s),
            ["SUP-1", "SUP-4"]
        );
        assert_eq!(
            keys(r#"cf[10050] ~ "\"a\\*b\"" ORDER BY key"#, &s),
            ["SUP-2", "SUP-3"]
        );
        assert_eq!(
            keys(r#"cf[10050] ~ "a\\+b" ORDER BY key"#, &s),
            ["SUP-2", "SUP-3"]
        );
        // An escaped wildcard is not a wildcard.
        assert!(keys(r#"cf[10050] ~ "o\\*""#, &s).is_empty());
        assert_eq!(
            keys(r#"cf[10050] ~ "o*" ORDER BY key"#, &s),
            ["SUP-1", "SUP-4"]
        );
    }

    #[test]
    fn unsupported_or_broken_search_text_is_refused() {
        let s = site();
        for (jql, expected) in [
            (r#"summary ~ "*rinter""#, "first character"),
            (r#"summary ~ "-printer""#, "not supported by this emulator"),
            (r#"summary ~ "a OR b""#, "boolean operator 'OR'"),
            (r#"summary ~ "a:b""#, "must be escaped"),
            (r#"summary ~ "\"open phrase""#, "not closed"),
            (r#"summary ~ "a\\""#, "ends in an escape character"),
        ] {
            let message = error(jql, &s);
            assert!(message.contains(expected), "{jql}: {message}");
            assert!(
                message.contains("is not valid") || message.contains("first"),
                "{jql}"
            );
        }
    }

    #[test]
    fn text_query_parser_builds_terms() {
        assert_eq!(
            TextQuery::parse(r#"Hello "big World" wi*95 \-x"#)
                .unwrap()
                .terms,
            vec![
                TextTerm::Phrase(vec!["hello".into()]),
                TextTerm::Phrase(vec!["big".into(), "world".into()]),
                TextTerm::Wildcard(vec![
                    PatternChar::Literal('w'),
                    PatternChar::Literal('i'),
                    PatternChar::Any,
                    PatternChar::Literal('9'),
                    PatternChar::Literal('5'),
                ]),
                TextTerm::Phrase(vec!["x".into()]),
            ]
        );
        // Nothing but punctuation: no words, matches nothing.
        assert!(!TextQuery::parse(r#""\-\-""#)
            .unwrap()
            .matches(&["--".to_string()]));
    }
}
