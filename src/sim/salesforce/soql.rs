//! The SOQL subset Tandem's polling and reconcile need: a tokenizer, a recursive-descent parser,
//! binding against the schema, and evaluation over the store.
//!
//! Supported: `SELECT f1, f2 FROM Type [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], …]
//! [LIMIT n]`, where `cond` combines `field op literal` (`= != <> < <= > >=`) and
//! `field [NOT] IN (…)` with `AND`, `OR`, `NOT` and parentheses. As in SOQL, `AND` and `OR` may not
//! be mixed at one level without parentheses. Everything else (relationship fields, functions,
//! `LIKE`, date literals such as `TODAY`, `OFFSET`, subqueries) is refused with `MALFORMED_QUERY`
//! rather than answered wrongly.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::Value;

use super::error::{ErrorCode, SfError};
use super::ids;
use super::schema::{FieldType, Object, Schema};
use super::store::{parse_datetime, Record, Store};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    DateTime(DateTime<Utc>),
    Date(NaiveDate),
    Op(Op),
    LParen,
    RParen,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => s.clone(),
            Token::Str(s) => format!("'{s}'"),
            Token::Num(n) => n.to_string(),
            Token::DateTime(d) => d.to_rfc3339(),
            Token::Date(d) => d.to_string(),
            Token::Op(op) => op.as_str().to_string(),
            Token::LParen => "(".into(),
            Token::RParen => ")".into(),
            Token::Comma => ",".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        }
    }
}

fn malformed(message: impl Into<String>) -> SfError {
    SfError::malformed_query(message)
}

/// Split SOQL text into tokens. String escapes follow Salesforce's rules: `\' \" \\ \n \r \t \b
/// \f \uXXXX`; `\_` and `\%` belong to `LIKE`, which the emulator does not support, so they and
/// every other backslash sequence are errors.
fn tokenize(text: &str) -> Result<Vec<Token>, SfError> {
    let chars: Vec<char> = text.chars().collect();
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
            '=' => {
                tokens.push(Token::Op(Op::Eq));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Op(Op::Ne));
                i += 2;
            }
            '<' => {
                let (op, len) = match chars.get(i + 1) {
                    Some('=') => (Op::Le, 2),
                    Some('>') => (Op::Ne, 2),
                    _ => (Op::Lt, 1),
                };
                tokens.push(Token::Op(op));
                i += len;
            }
            '>' => {
                let (op, len) = match chars.get(i + 1) {
                    Some('=') => (Op::Ge, 2),
                    _ => (Op::Gt, 1),
                };
                tokens.push(Token::Op(op));
                i += len;
            }
            '\'' => {
                let (value, next) = string_literal(&chars, i)?;
                tokens.push(Token::Str(value));
                i = next;
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let (token, next) = number_or_date(&chars, i)?;
                tokens.push(token);
                i = next;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            other => {
                return Err(malformed(format!(
                    "unexpected token: '{other}' at column {}",
                    i + 1
                )))
            }
        }
    }
    Ok(tokens)
}

fn string_literal(chars: &[char], start: usize) -> Result<(String, usize), SfError> {
    let mut value = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(malformed("unterminated string literal"));
        };
        match c {
            '\'' => return Ok((value, i + 1)),
            '\\' => {
                let Some(&e) = chars.get(i + 1) else {
                    return Err(malformed("unterminated string literal"));
                };
                let decoded = match e {
                    '\'' => '\'',
                    '"' => '"',
                    '\\' => '\\',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'u' => {
                        let hex: String = chars.iter().skip(i + 2).take(4).collect();
                        let code = (hex.len() == 4)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                malformed(format!("Invalid unicode escape sequence \\u{hex}"))
                            })?;
                        value.push(code);
                        i += 6;
                        continue;
                    }
                    other => {
                        return Err(malformed(format!(
                            "Invalid string literal: illegal character sequence '\\{other}' in string literal"
                        )))
                    }
                };
                value.push(decoded);
                i += 2;
            }
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
}

fn digits(chars: &[char], at: usize, n: usize) -> Option<u32> {
    let text: String = chars.get(at..at + n)?.iter().collect();
    if text.chars().all(|c| c.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// A number, a date (`2024-01-15`) or a datetime (`2024-01-15T10:00:00Z`, `…+01:00`,
/// optional fractional seconds).
fn number_or_date(chars: &[char], start: usize) -> Result<(Token, usize), SfError> {
    let is_date = digits(chars, start, 4).is_some()
        && chars.get(start + 4) == Some(&'-')
        && digits(chars, start + 5, 2).is_some()
        && chars.get(start + 7) == Some(&'-')
        && digits(chars, start + 8, 2).is_some();
    if !is_date {
        let mut i = start + 1;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        let text: String = chars[start..i].iter().collect();
        let n: f64 = text
            .parse()
            .map_err(|_| malformed(format!("invalid number: {text}")))?;
        if chars.get(i).is_some_and(|c| c.is_ascii_alphabetic()) {
            return Err(malformed(format!("unexpected token: '{text}{}'", chars[i])));
        }
        return Ok((Token::Num(n), i));
    }
    let text_at =
        |from: usize, to: usize| -> String { chars[from..to.min(chars.len())].iter().collect() };
    let date = NaiveDate::from_ymd_opt(
        digits(chars, start, 4).unwrap_or(0) as i32,
        digits(chars, start + 5, 2).unwrap_or(0),
        digits(chars, start + 8, 2).unwrap_or(0),
    )
    .ok_or_else(|| malformed(format!("invalid date: {}", text_at(start, start + 10))))?;
    let mut i = start + 10;
    if chars.get(i) != Some(&'T') {
        if chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(malformed(format!(
                "invalid date: {}",
                text_at(start, i + 1)
            )));
        }
        return Ok((Token::Date(date), i));
    }
    let bad = |end: usize| malformed(format!("invalid datetime: {}", text_at(start, end)));
    i += 1;
    let (Some(h), Some(m), Some(s)) = (
        digits(chars, i, 2),
        digits(chars, i + 3, 2),
        digits(chars, i + 6, 2),
    ) else {
        return Err(bad(i + 8));
    };
    if chars.get(i + 2) != Some(&':') || chars.get(i + 5) != Some(&':') {
        return Err(bad(i + 8));
    }
    i += 8;
    let mut nanos = 0u32;
    if chars.get(i) == Some(&'.') {
        let from = i + 1;
        i = from;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let fraction: String = chars[from..i].iter().collect();
        if fraction.is_empty() || fraction.len() > 9 {
            return Err(bad(i));
        }
        nanos = format!("{fraction:0<9}").parse().map_err(|_| bad(i))?;
    }
    let time = NaiveTime::from_hms_nano_opt(h, m, s, nanos).ok_or_else(|| bad(i))?;
    let offset_secs = match chars.get(i) {
        Some('Z') => {
            i += 1;
            0
        }
        Some(&sign @ ('+' | '-')) => {
            let (Some(oh), Some(om)) = (digits(chars, i + 1, 2), digits(chars, i + 4, 2)) else {
                return Err(bad(i + 6));
            };
            if chars.get(i + 3) != Some(&':') {
                return Err(bad(i + 6));
            }
            i += 6;
            let secs = (oh * 3600 + om * 60) as i32;
            if sign == '-' {
                -secs
            } else {
                secs
            }
        }
        // A `+` sent unencoded arrives as a space: refuse rather than guess the zone.
        _ => return Err(bad(i)),
    };
    if chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(bad(i + 1));
    }
    let offset = FixedOffset::east_opt(offset_secs).ok_or_else(|| bad(i))?;
    let at = offset
        .from_local_datetime(&NaiveDateTime::new(date, time))
        .single()
        .ok_or_else(|| bad(i))?
        .with_timezone(&Utc);
    Ok((Token::DateTime(at), i))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    DateTime(DateTime<Utc>),
    Date(NaiveDate),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: String,
        op: Op,
        value: Literal,
    },
    In {
        field: String,
        negated: bool,
        values: Vec<Literal>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderItem {
    pub field: String,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A parsed query; names are as written until bound to the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub fields: Vec<String>,
    pub object: String,
    pub filter: Option<Expr>,
    pub order: Vec<OrderItem>,
    pub limit: Option<usize>,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(s)) if s.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SfError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn expect(&mut self, token: Token) -> Result<(), SfError> {
        if self.peek() == Some(&token) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> SfError {
        match self.peek() {
            Some(token) => malformed(format!("unexpected token: '{}'", token.describe())),
            None => malformed("unexpected token: <EOF>"),
        }
    }

    fn name(&mut self) -> Result<String, SfError> {
        match self.peek() {
            Some(Token::Ident(name)) if !is_reserved(name) => {
                let name = name.clone();
                self.pos += 1;
                if self.peek() == Some(&Token::LParen) {
                    return Err(malformed(format!(
                        "functions such as {name}() are not supported by the emulator"
                    )));
                }
                if name.contains('.') {
                    return Err(malformed(format!(
                        "relationship fields such as {name} are not supported by the emulator"
                    )));
                }
                Ok(name)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, SfError> {
        self.expect_keyword("SELECT")?;
        let mut fields = vec![self.name()?];
        while self.peek() == Some(&Token::Comma) {
            self.pos += 1;
            fields.push(self.name()?);
        }
        self.expect_keyword("FROM")?;
        let object = self.name()?;
        let filter = if self.eat_keyword("WHERE") {
            Some(self.condition()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.name()?;
                let descending = if self.eat_keyword("DESC") {
                    true
                } else {
                    self.eat_keyword("ASC");
                    false
                };
                // SOQL's defaults: nulls first ascending, last descending.
                let mut nulls_first = !descending;
                if self.eat_keyword("NULLS") {
                    nulls_first = if self.eat_keyword("FIRST") {
                        true
                    } else {
                        self.expect_keyword("LAST")?;
                        false
                    };
                }
                order.push(OrderItem {
                    field,
                    descending,
                    nulls_first,
                });
                if self.peek() != Some(&Token::Comma) {
                    break;
                }
                self.pos += 1;
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            match self.next() {
                Some(Token::Num(n)) if n >= 0.0 && n.fract() == 0.0 => Some(n as usize),
                _ => return Err(malformed("LIMIT must be a non-negative integer")),
            }
        } else {
            None
        };
        if self.peek().is_some() {
            return Err(self.unexpected());
        }
        Ok(Query {
            fields,
            object,
            filter,
            order,
            limit,
        })
    }

    fn condition(&mut self) -> Result<Expr, SfError> {
        let first = self.term()?;
        let joiner = if self.peek_keyword("AND") {
            "AND"
        } else if self.peek_keyword("OR") {
            "OR"
        } else {
            return Ok(first);
        };
        let mut terms = vec![first];
        while self.eat_keyword(joiner) {
            terms.push(self.term()?);
        }
        let other = if joiner == "AND" { "OR" } else { "AND" };
        if self.peek_keyword(other) {
            // SOQL requires parentheses to mix AND and OR.
            return Err(malformed(format!("unexpected token: '{other}'")));
        }
        Ok(if joiner == "AND" {
            Expr::And(terms)
        } else {
            Expr::Or(terms)
        })
    }

    fn term(&mut self) -> Result<Expr, SfError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.term()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.condition()?;
            self.expect(Token::RParen)?;
            return Ok(inner);
        }
        let field = self.name()?;
        match self.next() {
            Some(Token::Op(op)) => Ok(Expr::Compare {
                field,
                op,
                value: self.literal()?,
            }),
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("IN") => {
                self.in_list(field, false)
            }
            Some(Token::Ident(word))
                if word.eq_ignore_ascii_case("NOT") && self.eat_keyword("IN") =>
            {
                self.in_list(field, true)
            }
            Some(Token::Ident(word)) => Err(malformed(format!(
                "operator {word} is not supported by the emulator"
            ))),
            Some(other) => Err(malformed(format!(
                "unexpected token: '{}'",
                other.describe()
            ))),
            None => Err(malformed("unexpected token: <EOF>")),
        }
    }

    fn in_list(&mut self, field: String, negated: bool) -> Result<Expr, SfError> {
        self.expect(Token::LParen)?;
        let mut values = vec![self.literal()?];
        while self.peek() == Some(&Token::Comma) {
            self.pos += 1;
            values.push(self.literal()?);
        }
        self.expect(Token::RParen)?;
        Ok(Expr::In {
            field,
            negated,
            values,
        })
    }

    fn literal(&mut self) -> Result<Literal, SfError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Literal::Str(s)),
            Some(Token::Num(n)) => Ok(Literal::Num(n)),
            Some(Token::DateTime(d)) => Ok(Literal::DateTime(d)),
            Some(Token::Date(d)) => Ok(Literal::Date(d)),
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("false") => {
                Ok(Literal::Bool(false))
            }
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("SELECT") => {
                Err(malformed("subqueries are not supported by the emulator"))
            }
            Some(Token::Ident(word)) => Err(malformed(format!(
                "unexpected token: '{word}' (date literals and bind variables are not supported by the emulator)"
            ))),
            Some(other) => Err(malformed(format!("unexpected token: '{}'", other.describe()))),
            None => Err(malformed("unexpected token: <EOF>")),
        }
    }
}

fn is_reserved(word: &str) -> bool {
    [
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "ORDER", "BY", "LIMIT", "ASC", "DESC",
        "NULLS", "NULL", "TRUE", "FALSE", "OFFSET", "GROUP", "HAVING", "LIKE",
    ]
    .iter()
    .any(|k| k.eq_ignore_ascii_case(word))
}

pub fn parse(text: &str) -> Result<Query, SfError> {
    let tokens = tokenize(text)?;
    Parser { tokens, pos: 0 }.query()
}

/// A query checked against the schema: canonical names, literals of the fields' types.
#[derive(Debug, Clone)]
pub struct Bound {
    pub object: String,
    pub fields: Vec<String>,
    filter: Option<BoundExpr>,
    order: Vec<(String, FieldType, bool, bool)>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone)]
enum BoundExpr {
    And(Vec<BoundExpr>),
    Or(Vec<BoundExpr>),
    Not(Box<BoundExpr>),
    Compare {
        field: String,
        kind: FieldType,
        op: Op,
        value: Literal,
    },
    In {
        field: String,
        kind: FieldType,
        negated: bool,
        values: Vec<Literal>,
    },
}

fn invalid_field(object: &Object, name: &str) -> SfError {
    SfError::bad_request(
        ErrorCode::InvalidField,
        format!(
            "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
            object.name
        ),
    )
}

pub fn bind(query: &Query, schema: &Schema) -> Result<Bound, SfError> {
    let object = schema.object(&query.object).ok_or_else(|| {
        SfError::bad_request(
            ErrorCode::InvalidType,
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                query.object
            ),
        )
    })?;
    let mut fields = Vec::with_capacity(query.fields.len());
    for name in &query.fields {
        let field = object
            .field(name)
            .ok_or_else(|| invalid_field(object, name))?;
        if fields.contains(&field.name) {
            return Err(malformed(format!(
                "duplicate field selected: {}",
                field.name
            )));
        }
        fields.push(field.name.clone());
    }
    let filter = query
        .filter
        .as_ref()
        .map(|expr| bind_expr(expr, object))
        .transpose()?;
    let mut order = Vec::new();
    for item in &query.order {
        let field = object
            .field(&item.field)
            .ok_or_else(|| invalid_field(object, &item.field))?;
        if field.kind == FieldType::Textarea {
            return Err(malformed(format!(
                "field '{}' can not be sorted in a query call",
                field.name
            )));
        }
        order.push((
            field.name.clone(),
            field.kind,
            item.descending,
            item.nulls_first,
        ));
    }
    Ok(Bound {
        object: object.name.clone(),
        fields,
        filter,
        order,
        limit: query.limit,
    })
}

fn bind_expr(expr: &Expr, object: &Object) -> Result<BoundExpr, SfError> {
    Ok(match expr {
        Expr::And(terms) => BoundExpr::And(
            terms
                .iter()
                .map(|t| bind_expr(t, object))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Or(terms) => BoundExpr::Or(
            terms
                .iter()
                .map(|t| bind_expr(t, object))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(inner) => BoundExpr::Not(Box::new(bind_expr(inner, object)?)),
        Expr::Compare { field, op, value } => {
            let f = object
                .field(field)
                .ok_or_else(|| invalid_field(object, field))?;
            if f.kind == FieldType::Textarea {
                return Err(filter_error(format!(
                    "field '{}' can not be filtered in a query call",
                    f.name
                )));
            }
            if *value == Literal::Null && !matches!(op, Op::Eq | Op::Ne) {
                return Err(filter_error(format!(
                    "invalid operator on null for field '{}'",
                    f.name
                )));
            }
            if f.kind == FieldType::Boolean && !matches!(op, Op::Eq | Op::Ne) {
                return Err(filter_error(format!(
                    "invalid operator on boolean field '{}'",
                    f.name
                )));
            }
            BoundExpr::Compare {
                field: f.name.clone(),
                kind: f.kind,
                op: *op,
                value: check_literal(&f.name, f.kind, value)?,
            }
        }
        Expr::In {
            field,
            negated,
            values,
        } => {
            let f = object
                .field(field)
                .ok_or_else(|| invalid_field(object, field))?;
            BoundExpr::In {
                field: f.name.clone(),
                kind: f.kind,
                negated: *negated,
                values: values
                    .iter()
                    .map(|v| check_literal(&f.name, f.kind, v))
                    .collect::<Result<_, _>>()?,
            }
        }
    })
}

fn filter_error(message: String) -> SfError {
    SfError::bad_request(ErrorCode::InvalidQueryFilterOperator, message)
}

/// The literal must suit the field's type; ids are brought to their 18-character form.
fn check_literal(name: &str, kind: FieldType, value: &Literal) -> Result<Literal, SfError> {
    let wrong = |want: &str| {
        filter_error(format!(
            "value of filter criterion for field '{name}' must be of type {want}"
        ))
    };
    match (kind, value) {
        (_, Literal::Null) => Ok(Literal::Null),
        (FieldType::Id | FieldType::Reference, Literal::Str(s)) => ids::normalize(s)
            .map(Literal::Str)
            .ok_or_else(|| filter_error(format!("invalid ID field: {s}"))),
        (k, Literal::Str(_)) if k.is_text() => Ok(value.clone()),
        (FieldType::Boolean, Literal::Bool(_)) => Ok(value.clone()),
        (FieldType::Datetime, Literal::DateTime(_)) => Ok(value.clone()),
        (FieldType::Date, Literal::Date(_)) => Ok(value.clone()),
        (k, Literal::Num(_)) if k.is_number() => Ok(value.clone()),
        (FieldType::Datetime, _) => Err(wrong("dateTime and should not be enclosed in quotes")),
        (FieldType::Date, _) => Err(wrong("date and should not be enclosed in quotes")),
        (FieldType::Boolean, _) => Err(wrong("boolean and should not be enclosed in quotes")),
        (k, _) if k.is_number() => Err(wrong("double and should not be enclosed in quotes")),
        _ => Err(wrong("string and should be enclosed in quotes")),
    }
}

/// Compare a stored value with a literal of the field's type; `None` when the stored value is
/// null or unreadable.
fn compare(kind: FieldType, stored: &Value, literal: &Literal) -> Option<Ordering> {
    match (kind, literal) {
        (FieldType::Id | FieldType::Reference, Literal::Str(s)) => Some(stored.as_str()?.cmp(s)),
        (_, Literal::Str(s)) => Some(stored.as_str()?.to_lowercase().cmp(&s.to_lowercase())),
        (_, Literal::Num(n)) => stored.as_f64()?.partial_cmp(n),
        (_, Literal::Bool(b)) => Some(stored.as_bool()?.cmp(b)),
        (_, Literal::DateTime(at)) => Some(parse_datetime(stored.as_str()?)?.cmp(at)),
        (_, Literal::Date(d)) => Some(
            NaiveDate::parse_from_str(stored.as_str()?, "%Y-%m-%d")
                .ok()?
                .cmp(d),
        ),
        (_, Literal::Null) => None,
    }
}

fn matches(expr: &BoundExpr, record: &Record) -> bool {
    match expr {
        BoundExpr::And(terms) => terms.iter().all(|t| matches(t, record)),
        BoundExpr::Or(terms) => terms.iter().any(|t| matches(t, record)),
        BoundExpr::Not(inner) => !matches(inner, record),
        BoundExpr::Compare {
            field,
            kind,
            op,
            value,
        } => {
            let stored = record.fields.get(field).unwrap_or(&Value::Null);
            match value {
                Literal::Null => (*op == Op::Eq) == stored.is_null(),
                // SOQL is two-valued: a null field is "not equal" to any value.
                _ => match compare(*kind, stored, value) {
                    Some(ordering) => op.holds(ordering),
                    None => *op == Op::Ne,
                },
            }
        }
        BoundExpr::In {
            field,
            kind,
            negated,
            values,
        } => {
            let stored = record.fields.get(field).unwrap_or(&Value::Null);
            let found = values.iter().any(|v| match v {
                Literal::Null => stored.is_null(),
                _ => compare(*kind, stored, v) == Some(Ordering::Equal),
            });
            found != *negated
        }
    }
}

fn order_values(kind: FieldType, a: &Value, b: &Value) -> Ordering {
    match kind {
        FieldType::Datetime => parse_datetime(a.as_str().unwrap_or_default())
            .cmp(&parse_datetime(b.as_str().unwrap_or_default())),
        FieldType::Boolean => a.as_bool().cmp(&b.as_bool()),
        k if k.is_number() => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        FieldType::Id | FieldType::Reference | FieldType::Date => a.as_str().cmp(&b.as_str()),
        _ => a
            .as_str()
            .map(str::to_lowercase)
            .cmp(&b.as_str().map(str::to_lowercase)),
    }
}

/// Run a bound query; rows are the REST shape with the selected fields.
pub fn execute(bound: &Bound, store: &Store, include_deleted: bool, version: &str) -> Vec<Value> {
    let mut rows: Vec<&Record> = store
        .scan(&bound.object, include_deleted)
        .filter(|r| bound.filter.as_ref().is_none_or(|f| matches(f, r)))
        .collect();
    if !bound.order.is_empty() {
        rows.sort_by(|a, b| {
            for (field, kind, descending, nulls_first) in &bound.order {
                let va = a.fields.get(field).unwrap_or(&Value::Null);
                let vb = b.fields.get(field).unwrap_or(&Value::Null);
                let ordering = match (va.is_null(), vb.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) if *nulls_first => Ordering::Less,
                    (true, false) => Ordering::Greater,
                    (false, true) if *nulls_first => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (false, false) => {
                        let o = order_values(*kind, va, vb);
                        if *descending {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    }
    let limit = bound.limit.unwrap_or(usize::MAX);
    rows.into_iter()
        .take(limit)
        .map(|r| r.to_json(version, Some(&bound.fields)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Query {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> SfError {
        parse(text).expect_err(text)
    }

    #[test]
    fn a_polling_query_parses_into_fields_filter_order_and_limit() {
        let q = ok("SELECT Id, Subject FROM Case WHERE SystemModstamp >= 2024-01-15T10:00:00Z ORDER BY SystemModstamp, Id ASC LIMIT 200");
        assert_eq!(q.fields, vec!["Id", "Subject"]);
        assert_eq!(q.object, "Case");
        assert_eq!(q.limit, Some(200));
        assert_eq!(q.order.len(), 2);
        let Some(Expr::Compare {
            op,
            value: Literal::DateTime(at),
            ..
        }) = q.filter
        else {
            panic!("a datetime comparison");
        };
        assert_eq!(op, Op::Ge);
        assert_eq!(at.to_rfc3339(), "2024-01-15T10:00:00+00:00");
    }

    #[test]
    fn datetime_literals_with_offsets_and_fractions_are_converted_to_utc() {
        let q = ok("SELECT Id FROM Case WHERE CreatedDate > 2024-01-15T11:00:00.500+01:00");
        let Some(Expr::Compare {
            value: Literal::DateTime(at),
            ..
        }) = q.filter
        else {
            panic!("a datetime comparison");
        };
        assert_eq!(at.to_rfc3339(), "2024-01-15T10:00:00.500+00:00");
    }

    #[test]
    fn a_datetime_whose_plus_sign_was_decoded_to_a_space_is_refused() {
        assert_eq!(
            err("SELECT Id FROM Case WHERE CreatedDate > 2024-01-15T11:00:00 01:00").code,
            ErrorCode::MalformedQuery
        );
    }

    #[test]
    fn date_literals_parse_as_dates() {
        let q = ok("SELECT Id FROM Case WHERE ClosedDate < 2024-02-01");
        assert!(matches!(
            q.filter,
            Some(Expr::Compare {
                value: Literal::Date(_),
                ..
            })
        ));
    }

    #[test]
    fn string_escapes_follow_salesforce_rules() {
        let q = ok(r#"SELECT Id FROM Case WHERE Subject = 'it\'s \"x\" \\ \n\t\u00e9'"#);
        let Some(Expr::Compare {
            value: Literal::Str(s),
            ..
        }) = q.filter
        else {
            panic!("a string comparison");
        };
        assert_eq!(s, "it's \"x\" \\ \n\té");
    }

    #[test]
    fn any_other_backslash_sequence_is_malformed() {
        for text in [
            r"SELECT Id FROM Case WHERE Subject = 'a\qb'",
            r"SELECT Id FROM Case WHERE Subject = 'a\_b'",
            r"SELECT Id FROM Case WHERE Subject = '\u12'",
        ] {
            assert_eq!(err(text).code, ErrorCode::MalformedQuery, "{text}");
        }
    }

    #[test]
    fn in_lists_and_not_in_parse() {
        let q = ok("SELECT Id FROM Case WHERE Status NOT IN ('Closed', 'Escalated')");
        assert!(
            matches!(q.filter, Some(Expr::In { negated: true, ref values, .. }) if values.len() == 2)
        );
    }

    #[test]
    fn parentheses_group_and_or_and_not() {
        let q = ok("SELECT Id FROM Case WHERE (Status = 'New' OR Status = 'Working') AND NOT (IsEscalated = true)");
        let Some(Expr::And(terms)) = q.filter else {
            panic!("an AND");
        };
        assert!(matches!(terms[0], Expr::Or(_)));
        assert!(matches!(terms[1], Expr::Not(_)));
    }

    #[test]
    fn mixing_and_with_or_without_parentheses_is_malformed() {
        assert_eq!(
            err("SELECT Id FROM Case WHERE Status = 'New' AND Priority = 'High' OR Origin = 'Web'")
                .code,
            ErrorCode::MalformedQuery
        );
    }

    #[test]
    fn unsupported_constructs_are_malformed_not_ignored() {
        for text in [
            "SELECT COUNT() FROM Case",
            "SELECT Account.Name FROM Case",
            "SELECT Id FROM Case WHERE Subject LIKE 'a%'",
            "SELECT Id FROM Case WHERE CreatedDate = TODAY",
            "SELECT Id FROM Case LIMIT 10 OFFSET 5",
            "SELECT Id FROM Case WHERE Id IN (SELECT CaseId FROM CaseComment)",
            "SELECT Id FROM Case GROUP BY Status",
            "SELECT Id, FROM Case",
            "SELECT Id FROM Case WHERE",
            "SELECT Id FROM Case WHERE Subject = :name",
            "SELECT * FROM Case",
        ] {
            assert_eq!(err(text).code, ErrorCode::MalformedQuery, "{text}");
        }
    }

    #[test]
    fn binding_rejects_unknown_fields_and_objects_and_wrongly_typed_literals() {
        let schema = Schema::seeded();
        let bind_err = |text: &str| bind(&ok(text), &schema).expect_err(text).code;
        assert_eq!(bind_err("SELECT Nope FROM Case"), ErrorCode::InvalidField);
        assert_eq!(bind_err("SELECT Id FROM Nope"), ErrorCode::InvalidType);
        assert_eq!(
            bind_err("SELECT Id FROM Case WHERE CreatedDate > '2024-01-01'"),
            ErrorCode::InvalidQueryFilterOperator
        );
        assert_eq!(
            bind_err("SELECT Id FROM Case WHERE Id = 'not-an-id'"),
            ErrorCode::InvalidQueryFilterOperator
        );
        assert_eq!(
            bind_err("SELECT Id, id FROM Case"),
            ErrorCode::MalformedQuery
        );
        let bound = bind(&ok("select id, jira_key__c from case"), &schema).expect("binds");
        assert_eq!(bound.fields, vec!["Id", "Jira_Key__c"]);
    }
}
