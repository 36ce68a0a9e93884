//! Notifications from Salesforce: Outbound Messages (SOAP, from a Flow or workflow rule) and JSON
//! change events (the Change Data Capture event shape, POSTed by a relay, a Flow HTTP callout or
//! Apex). Authentication comes first; nothing of an unauthenticated body is parsed.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde_json::{Map, Value};

use super::super::{
    secret_matches, state_key, Comment, Webhook, WebhookError, WebhookReply, WebhookRequest,
    COMMENT_OBJECT,
};
use super::{parse_timestamp, soql};
use crate::config::Secret;
use crate::journal::{ChangeOp, NewChange, Origin};

const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The header a relay that can set headers may use instead of the URL token.
const TOKEN_HEADER: &str = "x-tandem-webhook-token";

/// The Salesforce object whose notifications become [`COMMENT_OBJECT`] changes.
const CASE_COMMENT: &str = "CaseComment";

// No `Debug`: holds the webhook secret.
pub(super) struct Settings {
    pub connector: String,
    pub secret: Option<Secret>,
    pub allow_unauthenticated: bool,
    pub organization_id: Option<String>,
}

fn malformed(reason: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(reason.into())
}

pub(super) fn parse(
    settings: &Settings,
    request: &WebhookRequest<'_>,
) -> Result<Webhook, WebhookError> {
    authenticate(settings, request)?;
    let body = request.body;
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    match body.first() {
        Some(b'<') => outbound_message(settings, body),
        Some(b'{' | b'[') => change_events(settings, body),
        Some(_) => Err(malformed(
            "the body is neither a SOAP Outbound Message nor a JSON change event",
        )),
        None => Err(malformed("the body is empty")),
    }
}

fn authenticate(settings: &Settings, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    let Some(secret) = &settings.secret else {
        return if settings.allow_unauthenticated {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized(
                "no webhook_secret is configured and unauthenticated webhooks are not allowed"
                    .into(),
            ))
        };
    };
    // Outbound Messages cannot add headers, so the URL path carries the token; relays that
    // can may use the header instead.
    let given = request.path_token.or_else(|| {
        request
            .headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
    });
    match given {
        None => Err(WebhookError::Unauthorized("missing webhook token".into())),
        Some(token) if secret_matches(secret.expose().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(WebhookError::Unauthorized("wrong webhook token".into())),
    }
}

/// Org ids are 15 characters, case-sensitive, or 18 with a 3-character case-insensitive
/// checksum: the first 15 must match exactly, the suffix whatever its case.
fn same_org(configured: &str, given: &str) -> bool {
    let (a, b) = (configured.trim(), given.trim());
    let shaped =
        |id: &str| matches!(id.len(), 15 | 18) && id.bytes().all(|c| c.is_ascii_alphanumeric());
    if !shaped(a) || !shaped(b) || a[..15] != b[..15] {
        return false;
    }
    a.len() != 18 || b.len() != 18 || a[15..].eq_ignore_ascii_case(&b[15..])
}

// ---- Outbound Messages ---------------------------------------------------------------------

#[derive(Default)]
struct Notification {
    id: Option<String>,
    object: Option<String>,
    fields: Map<String, Value>,
}

/// Where an element sits, by namespace and local name, from the root.
type Path = Vec<(String, String)>;

fn at(path: &[(String, String)], expected: &[(&str, &str)]) -> bool {
    path.len() == expected.len()
        && path
            .iter()
            .zip(expected)
            .all(|((ns, name), (want_ns, want_name))| ns == want_ns && name == want_name)
}

const NOTIFICATIONS: [(&str, &str); 3] = [
    (SOAP_ENV_NS, "Envelope"),
    (SOAP_ENV_NS, "Body"),
    (OUTBOUND_NS, "notifications"),
];

fn under_notifications(path: &[(String, String)], rest: &[(&str, &str)]) -> bool {
    let mut expected: Vec<(&str, &str)> = NOTIFICATIONS.to_vec();
    expected.extend_from_slice(rest);
    at(path, &expected)
}

/// `xsi:type` and `xsi:nil` of an element, resolved by namespace rather than by prefix.
fn xsi_attributes<R>(
    reader: &NsReader<R>,
    start: &BytesStart<'_>,
) -> Result<(Option<String>, bool), WebhookError> {
    let mut kind = None;
    let mut nil = false;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| malformed(format!("bad XML attribute: {e}")))?;
        let (ns, local) = reader.resolve_attribute(attribute.key);
        if !matches!(ns, ResolveResult::Bound(n) if n.as_ref() == XSI_NS.as_bytes()) {
            continue;
        }
        let value = attribute
            .unescape_value()
            .map_err(|e| malformed(format!("bad XML attribute value: {e}")))?;
        match local.as_ref() {
            b"type" => kind = Some(value.into_owned()),
            b"nil" => nil = value.trim() == "true" || value.trim() == "1",
            _ => {}
        }
    }
    Ok((kind, nil))
}

fn outbound_message(settings: &Settings, body: &[u8]) -> Result<Webhook, WebhookError> {
    let mut reader = NsReader::from_reader(body);
    reader.config_mut().expand_empty_elements = true;
    let mut path: Path = Vec::new();
    let mut text = String::new();
    let mut nil = false;
    let mut organization: Option<String> = None;
    let mut seen_notifications = false;
    let mut current: Option<Notification> = None;
    let mut notifications = Vec::new();
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        let ns = match ns {
            ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
            _ => String::new(),
        };
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                path.push((ns, name));
                text.clear();
                let (kind, is_nil) = xsi_attributes(&reader, &start)?;
                nil = is_nil;
                if under_notifications(&path, &[]) {
                    seen_notifications = true;
                } else if under_notifications(&path, &[(OUTBOUND_NS, "Notification")]) {
                    current = Some(Notification::default());
                } else if under_notifications(
                    &path,
                    &[(OUTBOUND_NS, "Notification"), (OUTBOUND_NS, "sObject")],
                ) {
                    if let (Some(notification), Some(kind)) = (current.as_mut(), kind) {
                        // `sf:Case`: the prefix is whatever the sender bound; the name is after it.
                        let object = kind.rsplit(':').next().unwrap_or(&kind).to_string();
                        notification.object = Some(object);
                    }
                }
            }
            Event::Text(t) => {
                let t = t
                    .unescape()
                    .map_err(|e| malformed(format!("bad XML text: {e}")))?;
                text.push_str(&t);
            }
            Event::CData(c) => text.push_str(&String::from_utf8_lossy(&c.into_inner())),
            Event::End(_) => {
                let notification = [(OUTBOUND_NS, "Notification")];
                if under_notifications(&path, &[(OUTBOUND_NS, "OrganizationId")]) {
                    organization = Some(text.trim().to_string());
                } else if under_notifications(&path, &notification) {
                    notifications.extend(current.take());
                } else if under_notifications(
                    &path,
                    &[(OUTBOUND_NS, "Notification"), (OUTBOUND_NS, "Id")],
                ) {
                    if let Some(n) = current.as_mut() {
                        n.id = Some(text.trim().to_string()).filter(|s| !s.is_empty());
                    }
                } else if path.len() == 6
                    && under_notifications(
                        &path[..5],
                        &[(OUTBOUND_NS, "Notification"), (OUTBOUND_NS, "sObject")],
                    )
                    && path[5].0 == SOBJECT_NS
                {
                    if let Some(n) = current.as_mut() {
                        let value = if nil {
                            Value::Null
                        } else {
                            Value::String(text.clone())
                        };
                        n.fields.insert(path[5].1.clone(), value);
                    }
                }
                path.pop();
                text.clear();
                nil = false;
            }
            // Entity declarations are a way to make a small body expand; Salesforce never
            // sends a DOCTYPE.
            Event::DocType(_) => return Err(malformed("a DOCTYPE is not allowed")),
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_notifications {
        return Err(malformed(
            "no Envelope/Body/notifications element in the outbound namespace",
        ));
    }
    if let Some(expected) = &settings.organization_id {
        match &organization {
            Some(given) if same_org(expected, given) => {}
            Some(given) => {
                return Err(WebhookError::Unauthorized(format!(
                    "the Outbound Message is from organization {given}, not {expected}"
                )))
            }
            None => {
                return Err(WebhookError::Unauthorized(format!(
                    "the Outbound Message names no OrganizationId (expected {expected})"
                )))
            }
        }
    }
    let changes = notifications
        .into_iter()
        .map(|n| notification_change(settings, n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Webhook {
        changes,
        reply: WebhookReply::SoapAck,
    })
}

fn notification_change(
    settings: &Settings,
    notification: Notification,
) -> Result<NewChange, WebhookError> {
    let notification_id = notification
        .id
        .ok_or_else(|| malformed("a Notification without Id"))?;
    let object = notification
        .object
        .filter(|o| soql::is_object_name(o))
        .ok_or_else(|| {
            malformed(format!(
                "notification {notification_id}: sObject without a valid xsi:type"
            ))
        })?;
    let mut fields = notification.fields;
    let record_id = match fields.remove("Id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            return Err(malformed(format!(
                "notification {notification_id}: sObject without sf:Id"
            )))
        }
    };
    let time = |name: &str| -> Result<Option<i64>, WebhookError> {
        match fields.get(name) {
            Some(Value::String(text)) => parse_timestamp(text.trim()).map(Some).ok_or_else(|| {
                malformed(format!(
                    "notification {notification_id}: {name} `{text}` is not a dateTime"
                ))
            }),
            _ => Ok(None),
        }
    };
    let modified = match time("SystemModstamp")? {
        Some(at) => Some(at),
        None => time("LastModifiedDate")?,
    };
    let (object, snapshot) = if object == CASE_COMMENT {
        let parent_id = match fields.get("ParentId") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => {
                return Err(malformed(format!(
                    "notification {notification_id}: a CaseComment without ParentId (add it to the Outbound Message's fields)"
                )))
            }
        };
        let created = time("CreatedDate")?;
        let comment = Comment {
            id: record_id.clone(),
            parent_id,
            body: fields
                .get("CommentBody")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            // Times the message leaves out are unknown (unconfirmed what the engine wants
            // then); the other time stands in, else 0.
            created_at: created.or(modified).unwrap_or(0),
            modified_at: modified.or(created).unwrap_or(0),
        };
        let snapshot = serde_json::to_value(&comment)
            .map_err(|e| malformed(format!("notification {notification_id}: {e}")))?;
        (COMMENT_OBJECT.to_string(), snapshot)
    } else {
        (object, Value::Object(fields))
    };
    let dedupe_key = match modified {
        Some(at) => state_key(&settings.connector, &object, &record_id, at),
        // Without a modified time the notification id is what a redelivery repeats.
        None => format!("{}/om/{notification_id}", settings.connector),
    };
    Ok(NewChange {
        connector: settings.connector.clone(),
        object,
        record_id,
        op: ChangeOp::Upsert,
        snapshot,
        source_modified_at: modified,
        origin: Origin::Webhook,
        dedupe_key,
    })
}

// ---- JSON change events --------------------------------------------------------------------

fn change_events(settings: &Settings, body: &[u8]) -> Result<Webhook, WebhookError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let events = match value {
        Value::Array(events) => events,
        event => vec![event],
    };
    let mut changes = Vec::new();
    for (index, event) in events.iter().enumerate() {
        change_event(settings, index, event, &mut changes)?;
    }
    Ok(Webhook {
        changes,
        reply: WebhookReply::Empty,
    })
}

fn change_event(
    settings: &Settings,
    index: usize,
    event: &Value,
    changes: &mut Vec<NewChange>,
) -> Result<(), WebhookError> {
    let fail = |what: &str| malformed(format!("change event {index}: {what}"));
    let payload = event
        .get("data")
        .and_then(|d| d.get("payload"))
        .and_then(Value::as_object)
        .ok_or_else(|| fail("no data.payload object"))?;
    let header = payload
        .get("ChangeEventHeader")
        .and_then(Value::as_object)
        .ok_or_else(|| fail("no ChangeEventHeader"))?;
    let text = |name: &str| {
        header
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| fail(&format!("ChangeEventHeader.{name} is missing")))
    };
    let change_type = text("changeType")?;
    let entity = text("entityName")?;
    if change_type == "GAP_OVERFLOW" {
        // Too many changes for events: only a poll or reconcile can find them.
        tracing::warn!(
            connector = %settings.connector,
            entity,
            "GAP_OVERFLOW change event: changes were lost; the next poll must find them"
        );
        return Ok(());
    }
    let (op, gap) = match change_type {
        "CREATE" | "UPDATE" | "UNDELETE" => (ChangeOp::Upsert, false),
        "DELETE" => (ChangeOp::Delete, false),
        "GAP_CREATE" | "GAP_UPDATE" | "GAP_UNDELETE" => (ChangeOp::Upsert, true),
        "GAP_DELETE" => (ChangeOp::Delete, true),
        other => return Err(fail(&format!("unknown changeType `{other}`"))),
    };
    if !soql::is_object_name(entity) {
        return Err(fail(&format!(
            "entityName `{entity}` is not an object name"
        )));
    }
    let transaction_key = text("transactionKey")?;
    let sequence = match header.get("sequenceNumber") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(fail("ChangeEventHeader.sequenceNumber is missing")),
    };
    let committed = header
        .get("commitTimestamp")
        .and_then(Value::as_i64)
        .ok_or_else(|| fail("ChangeEventHeader.commitTimestamp is missing"))?;
    let record_ids: Vec<&str> = header
        .get("recordIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if record_ids.is_empty() {
        return Err(fail("ChangeEventHeader.recordIds is missing or empty"));
    }
    // GAP events carry no fields: an empty snapshot tells the engine to read the record.
    let mut fields = Map::new();
    if !gap && op == ChangeOp::Upsert {
        fields.extend(
            payload
                .iter()
                .filter(|(name, _)| name.as_str() != "ChangeEventHeader")
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        // An UPDATE lists fields set to null apart, with no value in the payload.
        for name in header
            .get("nulledFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            fields.insert(name.to_string(), Value::Null);
        }
    }
    let is_comment = entity == CASE_COMMENT;
    let object = if is_comment { COMMENT_OBJECT } else { entity };
    for record_id in record_ids {
        let snapshot = if is_comment && !fields.is_empty() {
            comment_snapshot(record_id, &fields, committed)
        } else {
            Value::Object(fields.clone())
        };
        // The event's own identity, deletes included: a Salesforce record can be undeleted and
        // deleted again, and that second delete must not collide with the first.
        let dedupe_key = format!(
            "{}/cdc/{transaction_key}/{sequence}/{record_id}",
            settings.connector
        );
        changes.push(NewChange {
            connector: settings.connector.clone(),
            object: object.to_string(),
            record_id: record_id.to_string(),
            op,
            snapshot,
            source_modified_at: Some(committed),
            origin: Origin::Webhook,
            dedupe_key,
        });
    }
    Ok(())
}

/// A comment change as a [`Comment`] when the event says enough (a CREATE has `ParentId`);
/// otherwise an empty snapshot, which makes the engine read the comments again. Salesforce
/// may not publish CaseComment change events at all (unconfirmed); the emulator does.
fn comment_snapshot(id: &str, fields: &Map<String, Value>, committed: i64) -> Value {
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let Some(parent_id) = text("ParentId") else {
        return Value::Object(Map::new());
    };
    let created = text("CreatedDate").and_then(parse_timestamp);
    let modified = text("LastModifiedDate").and_then(parse_timestamp);
    let comment = Comment {
        id: id.to_string(),
        parent_id: parent_id.to_string(),
        body: text("CommentBody").unwrap_or_default().to_string(),
        created_at: created.unwrap_or(committed),
        modified_at: modified.unwrap_or(committed),
    };
    serde_json::to_value(comment).unwrap_or_else(|_| Value::Object(Map::new()))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const ORG: &str = "00D5g00000TaNdEEAV";

    fn settings(secret: Option<&str>, org: Option<&str>) -> Settings {
        let secret = secret.map(|value| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), value).unwrap();
            let secret: Secret = serde_json::from_value(json!({ "file": file.path() })).unwrap();
            secret
        });
        Settings {
            connector: "sf".into(),
            secret,
            allow_unauthenticated: false,
            organization_id: org.map(str::to_string),
        }
    }

    fn request<'a>(
        headers: &'a HeaderMap,
        body: &'a [u8],
        token: Option<&'a str>,
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            headers,
            body,
            path_token: token,
        }
    }

    /// An envelope exactly as the emulator's notifier builds it.
    fn envelope(org: &str, notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="{OUTBOUND_NS}"><OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>http://127.0.0.1:1/services/Soap/c/62.0/00D5g00000TaNdE</EnterpriseUrl><PartnerUrl>http://127.0.0.1:1/services/Soap/u/62.0/00D5g00000TaNdE</PartnerUrl>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"#
        )
    }

    fn case_notification(id: &str, record: &str, extra: &str) -> String {
        format!(
            r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Case" xmlns:sf="{SOBJECT_NS}"><sf:Id>{record}</sf:Id><sf:Subject>Printer &amp; fax &lt;down&gt;</sf:Subject><sf:Status>New</sf:Status>{extra}</sObject></Notification>"#
        )
    }

    fn parse_with(settings: &Settings, body: &str) -> Result<Webhook, WebhookError> {
        let headers = HeaderMap::new();
        parse(
            settings,
            &request(&headers, body.as_bytes(), Some("s3cret")),
        )
    }

    #[test]
    fn an_outbound_message_becomes_one_upsert_per_notification() {
        let body = envelope(
            ORG,
            &[
                case_notification(
                    "04l000000000001AAA",
                    "500000000000001AAA",
                    "<sf:SystemModstamp>2024-01-15T10:00:00.000Z</sf:SystemModstamp><sf:Description xsi:nil=\"true\"/>",
                ),
                case_notification("04l000000000002AAA", "500000000000002AAA", ""),
            ]
            .concat(),
        );
        let webhook = parse_with(&settings(Some("s3cret"), Some(ORG)), &body).unwrap();
        assert_eq!(webhook.reply, WebhookReply::SoapAck);
        assert_eq!(webhook.changes.len(), 2);
        let first = &webhook.changes[0];
        assert_eq!(first.object, "Case");
        assert_eq!(first.record_id, "500000000000001AAA");
        assert_eq!(first.op, ChangeOp::Upsert);
        assert_eq!(first.origin, Origin::Webhook);
        assert_eq!(first.source_modified_at, Some(1_705_312_800_000));
        assert_eq!(
            first.snapshot,
            json!({
                "Subject": "Printer & fax <down>",
                "Status": "New",
                "SystemModstamp": "2024-01-15T10:00:00.000Z",
                "Description": null,
            })
        );
        assert_eq!(
            first.dedupe_key,
            state_key("sf", "Case", "500000000000001AAA", 1_705_312_800_000)
        );
        let second = &webhook.changes[1];
        assert_eq!(second.source_modified_at, None);
        assert_eq!(second.dedupe_key, "sf/om/04l000000000002AAA");
    }

    #[test]
    fn a_case_comment_notification_is_a_comment() {
        let notification = format!(
            r#"<Notification><Id>04l000000000003AAA</Id><sObject xsi:type="sf:CaseComment" xmlns:sf="{SOBJECT_NS}"><sf:Id>00a000000000001AAA</sf:Id><sf:ParentId>500000000000001AAA</sf:ParentId><sf:CommentBody>hello</sf:CommentBody><sf:CreatedDate>2024-01-15T09:00:00.000Z</sf:CreatedDate><sf:LastModifiedDate>2024-01-15T10:00:00.000Z</sf:LastModifiedDate></sObject></Notification>"#
        );
        let webhook = parse_with(
            &settings(Some("s3cret"), None),
            &envelope(ORG, &notification),
        )
        .unwrap();
        let change = &webhook.changes[0];
        assert_eq!(change.object, COMMENT_OBJECT);
        let comment: Comment = serde_json::from_value(change.snapshot.clone()).unwrap();
        assert_eq!(
            comment,
            Comment {
                id: "00a000000000001AAA".into(),
                parent_id: "500000000000001AAA".into(),
                body: "hello".into(),
                created_at: 1_705_309_200_000,
                modified_at: 1_705_312_800_000,
            }
        );
        assert_eq!(
            change.dedupe_key,
            state_key(
                "sf",
                COMMENT_OBJECT,
                "00a000000000001AAA",
                1_705_312_800_000
            )
        );
    }

    #[test]
    fn organization_ids_compare_on_15_characters_and_a_case_blind_suffix() {
        let one = case_notification("04l000000000001AAA", "500000000000001AAA", "");
        for accepted in [ORG, "00D5g00000TaNdE", "00D5g00000TaNdEeav"] {
            let body = envelope(accepted, &one);
            assert!(
                parse_with(&settings(Some("s3cret"), Some(ORG)), &body).is_ok(),
                "{accepted}"
            );
        }
        for refused in ["00D5g00000TaNde", "00D5g00000OtHeRAAA", "", "junk"] {
            let body = envelope(refused, &one);
            match parse_with(&settings(Some("s3cret"), Some(ORG)), &body) {
                Err(WebhookError::Unauthorized(message)) => {
                    assert!(message.contains(ORG), "{message}")
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_token_is_checked_before_anything_is_parsed() {
        let settings = settings(Some("s3cret"), None);
        let headers = HeaderMap::new();
        for token in [None, Some("wrong"), Some("s3cret-and-more"), Some("")] {
            let outcome = parse(&settings, &request(&headers, b"garbage", token));
            assert!(
                matches!(outcome, Err(WebhookError::Unauthorized(_))),
                "{token:?}"
            );
        }
        let mut with_header = HeaderMap::new();
        with_header.insert(TOKEN_HEADER, HeaderValue::from_static("s3cret"));
        let body = envelope(ORG, "");
        assert!(parse(&settings, &request(&with_header, body.as_bytes(), None)).is_ok());
        // The right token on a body that is not a notification is malformed, not unauthorized.
        assert!(matches!(
            parse(&settings, &request(&headers, b"garbage", Some("s3cret"))),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn without_a_secret_only_an_explicit_opt_in_accepts() {
        let mut settings = settings(None, None);
        let headers = HeaderMap::new();
        let body = envelope(ORG, "");
        assert!(matches!(
            parse(&settings, &request(&headers, body.as_bytes(), None)),
            Err(WebhookError::Unauthorized(_))
        ));
        settings.allow_unauthenticated = true;
        assert!(parse(&settings, &request(&headers, body.as_bytes(), None)).is_ok());
    }

    #[test]
    fn malformed_outbound_messages_say_why() {
        let settings = settings(Some("s3cret"), None);
        let cases = [
            ("<notifications><broken", "XML"),
            ("<a>fine xml</a>", "notifications"),
            (
                &envelope(
                    ORG,
                    &format!(
                        r#"<Notification><sObject xsi:type="sf:Case" xmlns:sf="{SOBJECT_NS}"><sf:Id>500000000000001AAA</sf:Id></sObject></Notification>"#
                    ),
                ),
                "without Id",
            ),
            (
                &envelope(
                    ORG,
                    "<Notification><Id>04l000000000001AAA</Id></Notification>",
                ),
                "xsi:type",
            ),
            (
                &envelope(
                    ORG,
                    &case_notification(
                        "04l000000000001AAA",
                        "500000000000001AAA",
                        "<sf:SystemModstamp>yesterday</sf:SystemModstamp>",
                    ),
                ),
                "dateTime",
            ),
            (r#"<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#, "DOCTYPE"),
            ("   ", "empty"),
            ("hello", "neither"),
        ];
        for (body, reason) in cases {
            match parse_with(&settings, body) {
                Err(WebhookError::Malformed(message)) => {
                    assert!(
                        message.contains(reason),
                        "{message} should mention {reason}"
                    )
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    fn event(change_type: &str, fields: Value, nulled: &[&str]) -> Value {
        let mut payload = json!({
            "ChangeEventHeader": {
                "entityName": "Case",
                "recordIds": ["500000000000001AAA", "500000000000002AAA"],
                "changeType": change_type,
                "changeOrigin": "com/salesforce/api/rest/62.0",
                "transactionKey": "tx-1",
                "sequenceNumber": 3,
                "commitTimestamp": 1_705_312_800_000i64,
                "commitNumber": 1,
                "commitUser": "005000000000001AAA",
                "changedFields": [],
                "diffFields": [],
                "nulledFields": nulled,
            }
        });
        if let (Some(map), Value::Object(fields)) = (payload.as_object_mut(), fields) {
            map.extend(fields);
        }
        json!({ "data": { "schema": "abc", "payload": payload, "event": { "replayId": 7 } }, "channel": "/data/CaseChangeEvent" })
    }

    fn parse_json(body: &Value) -> Result<Webhook, WebhookError> {
        parse_with(&settings(Some("s3cret"), None), &body.to_string())
    }

    #[test]
    fn change_events_of_every_type() {
        let update = parse_json(&event(
            "UPDATE",
            json!({"Status": "Escalated"}),
            &["Description"],
        ))
        .unwrap();
        assert_eq!(update.reply, WebhookReply::Empty);
        assert_eq!(update.changes.len(), 2);
        let change = &update.changes[0];
        assert_eq!(
            (change.op, change.object.as_str()),
            (ChangeOp::Upsert, "Case")
        );
        assert_eq!(
            change.snapshot,
            json!({"Status": "Escalated", "Description": null})
        );
        assert_eq!(change.source_modified_at, Some(1_705_312_800_000));
        assert_eq!(change.dedupe_key, "sf/cdc/tx-1/3/500000000000001AAA");
        assert_eq!(
            update.changes[1].dedupe_key,
            "sf/cdc/tx-1/3/500000000000002AAA"
        );

        for kind in ["CREATE", "UNDELETE"] {
            let webhook = parse_json(&event(kind, json!({"Subject": "s"}), &[])).unwrap();
            assert_eq!(webhook.changes[0].op, ChangeOp::Upsert);
            assert_eq!(webhook.changes[0].snapshot, json!({"Subject": "s"}));
        }

        let delete = parse_json(&event("DELETE", json!({}), &[])).unwrap();
        assert_eq!(delete.changes[0].op, ChangeOp::Delete);
        assert_eq!(
            delete.changes[0].dedupe_key, "sf/cdc/tx-1/3/500000000000001AAA",
            "a delete after an undelete is a new event"
        );

        for (kind, op) in [
            ("GAP_CREATE", ChangeOp::Upsert),
            ("GAP_UPDATE", ChangeOp::Upsert),
            ("GAP_UNDELETE", ChangeOp::Upsert),
            ("GAP_DELETE", ChangeOp::Delete),
        ] {
            let webhook = parse_json(&event(kind, json!({"Subject": "ignored"}), &[])).unwrap();
            assert_eq!(webhook.changes.len(), 2, "{kind}");
            assert_eq!(webhook.changes[0].op, op, "{kind}");
            assert_eq!(webhook.changes[0].snapshot, json!({}), "{kind}");
        }

        let overflow = parse_json(&event("GAP_OVERFLOW", json!({}), &[])).unwrap();
        assert!(overflow.changes.is_empty());

        // An array of events is a batch.
        let batch = json!([
            event("CREATE", json!({}), &[]),
            event("DELETE", json!({}), &[])
        ]);
        assert_eq!(parse_json(&batch).unwrap().changes.len(), 4);
    }

    #[test]
    fn malformed_change_events_say_why() {
        let mut missing_key = event("UPDATE", json!({}), &[]);
        missing_key["data"]["payload"]["ChangeEventHeader"]
            .as_object_mut()
            .unwrap()
            .remove("transactionKey");
        let mut no_ids = event("UPDATE", json!({}), &[]);
        no_ids["data"]["payload"]["ChangeEventHeader"]["recordIds"] = json!([]);
        let cases = [
            (json!({"data": {}}), "payload"),
            (json!({"data": {"payload": {}}}), "ChangeEventHeader"),
            (missing_key, "transactionKey"),
            (no_ids, "recordIds"),
            (event("MERGE", json!({}), &[]), "unknown changeType"),
        ];
        for (body, reason) in cases {
            match parse_json(&body) {
                Err(WebhookError::Malformed(message)) => {
                    assert!(
                        message.contains(reason),
                        "{message} should mention {reason}"
                    )
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_with(&settings(Some("s3cret"), None), "{not json"),
            Err(WebhookError::Malformed(_))
        ));
    }
}
