//! The HTTP surface: `/services/oauth2/token`, `/services/data/…` and the emulator's own
//! `/__sim/` routes. Handlers parse, call the store under its lock, and shape the answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth;
use super::error::{ErrorCode, SfError};
use super::ids;
use super::notify::{ChangeEventEndpoint, OutboundMessage};
use super::soql;
use super::store::{external_id_field, object_of, Store, Upserted};
use super::{Shared, VERSIONS};
use crate::sim::control;

const MAX_COLLECTION: usize = 200;
const DEFAULT_BATCH: usize = 2000;

pub fn router(shared: Arc<Shared>) -> Router {
    let data = Router::new()
        .route("/services/data/{v}", get(resources))
        .route("/services/data/{v}/", get(resources))
        .route("/services/data/{v}/limits", get(limits))
        .route("/services/data/{v}/sobjects", get(describe_global))
        .route("/services/data/{v}/sobjects/", get(describe_global))
        .route(
            "/services/data/{v}/sobjects/{ty}",
            get(sobject_info).post(create),
        )
        .route(
            "/services/data/{v}/sobjects/{ty}/",
            get(sobject_info).post(create),
        )
        .route("/services/data/{v}/sobjects/{ty}/describe", get(describe))
        .route("/services/data/{v}/sobjects/{ty}/describe/", get(describe))
        .route(
            "/services/data/{v}/sobjects/{ty}/{id}",
            get(read).patch(update).delete(delete),
        )
        .route(
            "/services/data/{v}/sobjects/{ty}/{field}/{value}",
            get(read_by_external_id)
                .patch(upsert)
                .delete(delete_by_external_id),
        )
        .route("/services/data/{v}/query", get(query))
        .route("/services/data/{v}/query/", get(query))
        .route("/services/data/{v}/query/{locator}", get(query_more))
        .route("/services/data/{v}/queryAll", get(query_all))
        .route("/services/data/{v}/queryAll/", get(query_all))
        .route("/services/data/{v}/queryAll/{locator}", get(query_more))
        .route(
            "/services/data/{v}/composite/sobjects",
            post(collection_create)
                .patch(collection_update)
                .delete(collection_delete),
        )
        .route(
            "/services/data/{v}/composite/sobjects/{ty}",
            post(collection_retrieve),
        )
        .route(
            "/services/data/{v}/composite/sobjects/{ty}/{field}",
            axum::routing::patch(collection_upsert),
        )
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            auth::require_session,
        ));
    let public = Router::new()
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .route("/services/oauth2/token", post(auth::token));
    let sim = Router::new()
        .route(
            "/__sim/outbound-messages",
            post(add_outbound_message).get(list_outbound_messages),
        )
        .route(
            "/__sim/change-events",
            post(add_change_events).get(list_change_events),
        )
        .route("/__sim/tokens/expire", post(expire_tokens))
        .route("/__sim/locks/{id}", put(lock).delete(unlock))
        .route("/__sim/api-usage", put(set_api_usage))
        .route("/__sim/records/{ty}", post(sim_insert));
    let dump_shared = shared.clone();
    let dump: control::StateDump = Arc::new(move || dump_shared.dump());
    data.merge(public)
        .route_layer(middleware::from_fn_with_state(
            shared.control.clone(),
            control::inject,
        ))
        .merge(sim)
        .with_state(shared.clone())
        .merge(control::routes(shared.control.clone(), dump))
}

type SimState = State<Arc<Shared>>;

/// `changeOrigin` for a write: the REST API plus `client=NAME` from `Sforce-Call-Options`.
fn origin(headers: &HeaderMap, version: &str) -> String {
    let base = format!(
        "com/salesforce/api/rest/{}",
        version.trim_start_matches('v')
    );
    let client = headers
        .get("Sforce-Call-Options")
        .and_then(|v| v.to_str().ok())
        .and_then(|options| {
            options
                .split(',')
                .find_map(|part| part.trim().strip_prefix("client="))
                .map(str::trim)
                .filter(|name| !name.is_empty())
        });
    match client {
        Some(name) => format!("{base};client={name}"),
        None => base,
    }
}

fn parse_body(body: &[u8]) -> Result<Value, SfError> {
    if body.is_empty() {
        return Err(SfError::json(
            "No content to map due to end-of-input at [line:1, column:0]",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| SfError::json(format!("{e} at [line:{}, column:{}]", e.line(), e.column())))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SfError> {
    match parse_body(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(SfError::json(
            "Cannot deserialize instance of SObject from non-object value",
        )),
    }
}

fn status_json(status: StatusCode, value: Value) -> Response {
    (status, Json(value)).into_response()
}

fn result<T: IntoResponse>(outcome: Result<T, SfError>) -> Response {
    match outcome {
        Ok(ok) => ok.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn versions() -> Json<Value> {
    Json(Value::Array(
        VERSIONS
            .iter()
            .map(|(version, label)| {
                json!({ "label": label, "url": format!("/services/data/v{version}"), "version": version })
            })
            .collect(),
    ))
}

async fn resources(Path(v): Path<String>) -> Json<Value> {
    let base = format!("/services/data/{v}");
    Json(json!({
        "sobjects": format!("{base}/sobjects"),
        "query": format!("{base}/query"),
        "queryAll": format!("{base}/queryAll"),
        "composite": format!("{base}/composite"),
        "limits": format!("{base}/limits"),
    }))
}

async fn limits(State(shared): SimState) -> Json<Value> {
    let used = shared.api_used.load(std::sync::atomic::Ordering::Relaxed);
    let max = shared.daily_limit;
    Json(json!({
        "DailyApiRequests": { "Max": max, "Remaining": max.saturating_sub(used) },
    }))
}

async fn describe_global(State(shared): SimState, Path(v): Path<String>) -> Json<Value> {
    Json(json!({
        "encoding": "UTF-8",
        "maxBatchSize": MAX_COLLECTION,
        "sobjects": shared.schema.objects().iter().map(|o| o.summary(&v)).collect::<Vec<_>>(),
    }))
}

async fn sobject_info(State(shared): SimState, Path((v, ty)): Path<(String, String)>) -> Response {
    result(
        object_of(&shared.schema, &ty)
            .map(|o| Json(json!({ "objectDescribe": o.summary(&v), "recentItems": [] }))),
    )
}

async fn describe(State(shared): SimState, Path((v, ty)): Path<(String, String)>) -> Response {
    result(object_of(&shared.schema, &ty).map(|o| Json(o.describe(&v))))
}

async fn create(
    State(shared): SimState,
    Path((v, ty)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = (|| {
        let object = object_of(&shared.schema, &ty)?;
        let body = parse_object(&body)?;
        if body.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
            return Err(SfError::bad_request(
                ErrorCode::InvalidField,
                "cannot specify Id in an insert call",
            )
            .with_fields(["Id"]));
        }
        let name = object.name.clone();
        shared.commit(&origin(&headers, &v), |store| store.create(&name, &body))
    })();
    result(outcome.map(|id| {
        status_json(
            StatusCode::CREATED,
            json!({ "id": id, "success": true, "errors": [] }),
        )
    }))
}

#[derive(Debug, Deserialize)]
struct FieldsParam {
    fields: Option<String>,
}

/// Canonical names of a `?fields=` list; unknown names are `INVALID_FIELD`.
fn selected_fields(
    shared: &Shared,
    ty: &str,
    fields: Option<&str>,
) -> Result<Option<Vec<String>>, SfError> {
    let object = object_of(&shared.schema, ty)?;
    let Some(list) = fields.filter(|f| !f.trim().is_empty()) else {
        return Ok(None);
    };
    list.split(',')
        .map(|name| {
            let name = name.trim();
            object.field(name).map(|f| f.name.clone()).ok_or_else(|| {
                SfError::bad_request(
                    ErrorCode::InvalidField,
                    format!("No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.", object.name),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

async fn read(
    State(shared): SimState,
    Path((v, ty, id)): Path<(String, String, String)>,
    Query(params): Query<FieldsParam>,
) -> Response {
    result((|| {
        let fields = selected_fields(&shared, &ty, params.fields.as_deref())?;
        let object = object_of(&shared.schema, &ty)?;
        let store = shared.store.read().expect("store lock");
        let record = store.get(object, &id)?;
        Ok(Json(record.to_json(&v, fields.as_deref())))
    })())
}

async fn update(
    State(shared): SimState,
    Path((v, ty, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    result((|| {
        let body = parse_object(&body)?;
        shared.commit(&origin(&headers, &v), |store| store.update(&ty, &id, &body))?;
        Ok(StatusCode::NO_CONTENT)
    })())
}

async fn delete(
    State(shared): SimState,
    Path((v, ty, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    result((|| {
        object_of(&shared.schema, &ty)?;
        shared.commit(&origin(&headers, &v), |store| {
            // A malformed id in the path is simply a resource that does not exist.
            if ids::normalize(&id).is_none() {
                return Err(SfError::not_found());
            }
            store.delete(Some(&ty), &id)
        })?;
        Ok(StatusCode::NO_CONTENT)
    })())
}

/// 300 Multiple Choices: the URLs of every record carrying the external id.
fn ambiguous(v: &str, ty: &str, ids: &[String]) -> Response {
    status_json(
        StatusCode::MULTIPLE_CHOICES,
        Value::Array(
            ids.iter()
                .map(|id| Value::String(format!("/services/data/{v}/sobjects/{ty}/{id}")))
                .collect(),
        ),
    )
}

async fn read_by_external_id(
    State(shared): SimState,
    Path((v, ty, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<FieldsParam>,
) -> Response {
    let outcome = (|| {
        let fields = selected_fields(&shared, &ty, params.fields.as_deref())?;
        let object = object_of(&shared.schema, &ty)?;
        let field = external_id_field(object, &field)?;
        let store = shared.store.read().expect("store lock");
        let matches = store.find_by_external_id(object, field, &value);
        match matches.as_slice() {
            [] => Err(SfError::not_found()),
            [id] => {
                let record = store.get(object, id)?;
                Ok(Json(record.to_json(&v, fields.as_deref())).into_response())
            }
            _ => Ok(ambiguous(&v, &object.name, &matches)),
        }
    })();
    result(outcome)
}

async fn upsert(
    State(shared): SimState,
    Path((v, ty, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = (|| {
        let object = object_of(&shared.schema, &ty)?;
        external_id_field(object, &field)?;
        let body = parse_object(&body)?;
        let name = object.name.clone();
        let upserted = shared.commit(&origin(&headers, &v), |store| {
            store.upsert(&name, &field, &value, &body)
        })?;
        Ok(match upserted {
            Upserted::Created(id) => status_json(
                StatusCode::CREATED,
                json!({ "id": id, "success": true, "errors": [], "created": true }),
            ),
            Upserted::Updated(id) => status_json(
                StatusCode::OK,
                json!({ "id": id, "success": true, "errors": [], "created": false }),
            ),
            Upserted::Ambiguous(ids) => ambiguous(&v, &name, &ids),
        })
    })();
    result(outcome)
}

async fn delete_by_external_id(
    State(shared): SimState,
    Path((v, ty, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let outcome = (|| -> Result<_, SfError> {
        let object = object_of(&shared.schema, &ty)?;
        let field = external_id_field(object, &field)?;
        let name = object.name.clone();
        shared.commit(&origin(&headers, &v), |store| {
            let matches = store.find_by_external_id(object, field, &value);
            match matches.as_slice() {
                [] => Err(SfError::not_found()),
                [id] => store
                    .delete(Some(&name), id)
                    .map(|()| StatusCode::NO_CONTENT.into_response()),
                _ => Ok(ambiguous(&v, &name, &matches)),
            }
        })
    })();
    result(outcome)
}

#[derive(Debug, Deserialize)]
struct QueryParam {
    q: Option<String>,
}

/// `Sforce-Query-Options: batchSize=N`, kept within Salesforce's 200–2000.
fn batch_size(headers: &HeaderMap) -> Option<usize> {
    let options = headers.get("Sforce-Query-Options")?.to_str().ok()?;
    options
        .split(',')
        .find_map(|part| part.trim().strip_prefix("batchSize="))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .map(|n| n.clamp(200, 2000))
}

fn run_query(
    shared: &Shared,
    v: &str,
    headers: &HeaderMap,
    q: Option<&str>,
    all_rows: bool,
) -> Result<Json<Value>, SfError> {
    let text = q
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| SfError::malformed_query("missing query string parameter q"))?;
    let parsed = soql::parse(text)?;
    let bound = soql::bind(&parsed, &shared.schema)?;
    let rows = {
        let store = shared.store.read().expect("store lock");
        soql::execute(&bound, &store, all_rows, v)
    };
    let batch = batch_size(headers).unwrap_or(DEFAULT_BATCH);
    let total = rows.len();
    if total <= batch {
        return Ok(Json(
            json!({ "totalSize": total, "done": true, "records": rows }),
        ));
    }
    let rows = Arc::new(rows);
    let cursor = shared.open_cursor(rows.clone(), batch, all_rows);
    Ok(Json(page(v, &cursor, &rows, 0, batch, all_rows)))
}

fn page(
    v: &str,
    cursor: &str,
    rows: &[Value],
    offset: usize,
    batch: usize,
    all_rows: bool,
) -> Value {
    let end = (offset + batch).min(rows.len());
    let mut answer = json!({
        "totalSize": rows.len(),
        "done": end >= rows.len(),
        "records": rows[offset.min(end)..end],
    });
    if end < rows.len() {
        let resource = if all_rows { "queryAll" } else { "query" };
        answer["nextRecordsUrl"] =
            Value::String(format!("/services/data/{v}/{resource}/{cursor}-{end}"));
    }
    answer
}

async fn query(
    State(shared): SimState,
    Path(v): Path<String>,
    headers: HeaderMap,
    Query(params): Query<QueryParam>,
) -> Response {
    result(run_query(&shared, &v, &headers, params.q.as_deref(), false))
}

async fn query_all(
    State(shared): SimState,
    Path(v): Path<String>,
    headers: HeaderMap,
    Query(params): Query<QueryParam>,
) -> Response {
    result(run_query(&shared, &v, &headers, params.q.as_deref(), true))
}

async fn query_more(
    State(shared): SimState,
    Path((v, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let invalid = || SfError::bad_request(ErrorCode::InvalidQueryLocator, "invalid query locator");
    let outcome = (|| {
        let (cursor, offset) = locator.split_once('-').ok_or_else(invalid)?;
        let offset: usize = offset.parse().map_err(|_| invalid())?;
        let (rows, batch, all_rows) = shared.cursor(cursor).ok_or_else(invalid)?;
        if offset > rows.len() {
            return Err(invalid());
        }
        let batch = batch_size(&headers).unwrap_or(batch);
        Ok(Json(page(&v, cursor, &rows, offset, batch, all_rows)))
    })();
    result(outcome)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CollectionBody {
    #[serde(default)]
    all_or_none: bool,
    #[serde(default)]
    records: Vec<Value>,
}

fn parse_collection(body: &[u8]) -> Result<CollectionBody, SfError> {
    let value = parse_body(body)?;
    let parsed: CollectionBody =
        serde_json::from_value(value).map_err(|e| SfError::json(e.to_string()))?;
    if parsed.records.len() > MAX_COLLECTION {
        // Unconfirmed wording; the code is Salesforce's for too many records.
        return Err(SfError::bad_request(
            ErrorCode::ExceededIdLimit,
            format!("record limit reached. cannot submit more than {MAX_COLLECTION} records into this call"),
        ));
    }
    Ok(parsed)
}

/// One item of a collection result.
type ItemResult = Result<(Option<String>, Option<bool>), (Option<String>, SfError)>;

/// Run `count` items as one transaction. With `all_or_none`, any failure rolls every write back
/// and the items that had succeeded report `ALL_OR_NONE_OPERATION_ROLLED_BACK`.
fn run_collection(
    shared: &Shared,
    origin: &str,
    all_or_none: bool,
    count: usize,
    mut item: impl FnMut(&mut Store, usize) -> ItemResult,
) -> Vec<ItemResult> {
    shared.commit(origin, |store| {
        let snapshot = all_or_none.then(|| store.clone());
        let mut results: Vec<ItemResult> = (0..count).map(|i| item(store, i)).collect();
        if let Some(snapshot) = snapshot {
            if results.iter().any(Result::is_err) {
                *store = snapshot;
                for r in results.iter_mut() {
                    if let Ok((id, _)) = r {
                        *r = Err((
                            id.take(),
                            SfError::bad_request(
                                ErrorCode::AllOrNoneOperationRolledBack,
                                "Record rolled back because not all records were valid and the request was using AllOrNone header",
                            ),
                        ));
                    }
                }
            }
        }
        results
    })
}

fn collection_answer(results: Vec<ItemResult>, rolled_back_keeps_id: bool) -> Response {
    let items: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok((id, created)) => {
                let mut item = json!({ "id": id, "success": true, "errors": [] });
                if let Some(created) = created {
                    item["created"] = Value::Bool(created);
                }
                item
            }
            Err((id, error)) => {
                let mut item = json!({ "success": false, "errors": [error.collection_item()] });
                if let Some(id) = id.filter(|_| rolled_back_keeps_id) {
                    item["id"] = Value::String(id);
                }
                item
            }
        })
        .collect();
    status_json(StatusCode::OK, Value::Array(items))
}

/// `attributes.type` of a collection record.
fn record_type(record: &Map<String, Value>) -> Result<String, SfError> {
    record
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            SfError::bad_request(ErrorCode::InvalidType, "Must send a concrete entity type.")
        })
}

fn as_record(value: &Value) -> Result<Map<String, Value>, SfError> {
    value.as_object().cloned().ok_or_else(|| {
        SfError::json("Cannot deserialize instance of SObject from non-object value")
    })
}

async fn collection_create(
    State(shared): SimState,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match parse_collection(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let results = run_collection(
        &shared,
        &origin(&headers, &v),
        request.all_or_none,
        request.records.len(),
        |store, i| {
            let mut attempt = || {
                let record = as_record(&request.records[i])?;
                let ty = record_type(&record)?;
                if record.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
                    return Err(SfError::bad_request(
                        ErrorCode::InvalidField,
                        "cannot specify Id in an insert call",
                    )
                    .with_fields(["Id"]));
                }
                store.create(&ty, &record)
            };
            attempt().map(|id| (Some(id), None)).map_err(|e| (None, e))
        },
    );
    collection_answer(results, false)
}

async fn collection_update(
    State(shared): SimState,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match parse_collection(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let results = run_collection(
        &shared,
        &origin(&headers, &v),
        request.all_or_none,
        request.records.len(),
        |store, i| {
            let mut given_id = None;
            let mut attempt = || -> Result<String, SfError> {
                let mut record = as_record(&request.records[i])?;
                let ty = record_type(&record)?;
                let key = record
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case("Id"))
                    .cloned()
                    .ok_or_else(|| {
                        SfError::bad_request(
                            ErrorCode::MissingArgument,
                            "Id not specified in an update call",
                        )
                    })?;
                let raw = record.remove(&key).unwrap_or(Value::Null);
                let raw = raw.as_str().unwrap_or_default().to_string();
                given_id = Some(raw.clone());
                let id = ids::normalize(&raw)
                    .filter(|id| {
                        store
                            .schema()
                            .object(&ty)
                            .is_some_and(|o| id.starts_with(&o.key_prefix))
                    })
                    .ok_or_else(|| {
                        SfError::bad_request(ErrorCode::MalformedId, format!("malformed id {raw}"))
                            .with_fields(["Id"])
                    })?;
                given_id = Some(id.clone());
                store.update(&ty, &id, &record).map_err(item_error)?;
                Ok(id)
            };
            let outcome = attempt();
            outcome
                .map(|id| (Some(id), None))
                .map_err(|e| (given_id.clone(), e))
        },
    );
    collection_answer(results, true)
}

/// Inside a collection, a record that never existed is an invalid reference rather than a 404
/// (unconfirmed: Salesforce's SOAP-style item errors are used).
fn item_error(error: SfError) -> SfError {
    if error.code == ErrorCode::NotFound {
        SfError::bad_request(
            ErrorCode::InvalidCrossReferenceKey,
            "invalid cross reference id",
        )
    } else {
        error
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteParams {
    ids: Option<String>,
    all_or_none: Option<bool>,
}

async fn collection_delete(
    State(shared): SimState,
    Path(v): Path<String>,
    headers: HeaderMap,
    Query(params): Query<DeleteParams>,
) -> Response {
    let ids_given: Vec<String> = params
        .ids
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids_given.is_empty() {
        return SfError::bad_request(ErrorCode::MissingArgument, "ids parameter is required")
            .into_response();
    }
    if ids_given.len() > MAX_COLLECTION {
        return SfError::bad_request(
            ErrorCode::ExceededIdLimit,
            format!("record limit reached. cannot submit more than {MAX_COLLECTION} records into this call"),
        )
        .into_response();
    }
    let results = run_collection(
        &shared,
        &origin(&headers, &v),
        params.all_or_none.unwrap_or(false),
        ids_given.len(),
        |store, i| {
            let raw = &ids_given[i];
            let id = ids::normalize(raw).unwrap_or_else(|| raw.clone());
            store
                .delete(None, raw)
                .map(|()| (Some(id.clone()), None))
                .map_err(|e| (Some(id), item_error(e).with_fields(Vec::<String>::new())))
        },
    );
    collection_answer(results, true)
}

async fn collection_upsert(
    State(shared): SimState,
    Path((v, ty, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = (|| -> Result<_, SfError> {
        let object = object_of(&shared.schema, &ty)?;
        let field = external_id_field(object, &field)?;
        Ok((
            object.name.clone(),
            field.name.clone(),
            parse_collection(&body)?,
        ))
    })();
    let (object, field, request) = match outcome {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let results = run_collection(
        &shared,
        &origin(&headers, &v),
        request.all_or_none,
        request.records.len(),
        |store, i| {
            let mut attempt = || {
                let mut record = as_record(&request.records[i])?;
                let ty = record_type(&record)?;
                if !ty.eq_ignore_ascii_case(&object) {
                    return Err(SfError::bad_request(
                        ErrorCode::InvalidType,
                        format!("records must all be of type {object}"),
                    ));
                }
                let key = record
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case(&field))
                    .cloned()
                    .ok_or_else(|| {
                        SfError::bad_request(
                            ErrorCode::MissingArgument,
                            format!("{field} not specified"),
                        )
                        .with_fields([field.clone()])
                    })?;
                let value = match record.remove(&key) {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(SfError::bad_request(
                            ErrorCode::MissingArgument,
                            format!("{field} not specified"),
                        )
                        .with_fields([field.clone()]))
                    }
                };
                match store.upsert(&object, &field, &value, &record)? {
                    Upserted::Created(id) => Ok((Some(id), Some(true))),
                    Upserted::Updated(id) => Ok((Some(id), Some(false))),
                    Upserted::Ambiguous(ids) => Err(SfError::bad_request(
                        ErrorCode::DuplicateValue,
                        format!(
                            "duplicate value found: {field} duplicates value on records with ids: {}",
                            ids.join(", ")
                        ),
                    )),
                }
            };
            attempt().map_err(|e| (None, e))
        },
    );
    collection_answer(results, false)
}

#[derive(Debug, Deserialize)]
struct RetrieveBody {
    ids: Vec<String>,
    fields: Vec<String>,
}

async fn collection_retrieve(
    State(shared): SimState,
    Path((v, ty)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    result((|| {
        let request: RetrieveBody =
            serde_json::from_value(parse_body(&body)?).map_err(|e| SfError::json(e.to_string()))?;
        if request.ids.len() > 2000 {
            return Err(SfError::bad_request(
                ErrorCode::ExceededIdLimit,
                "record limit reached. cannot retrieve more than 2000 records",
            ));
        }
        let fields = selected_fields(&shared, &ty, Some(&request.fields.join(",")))?;
        let object = object_of(&shared.schema, &ty)?;
        let store = shared.store.read().expect("store lock");
        let rows: Vec<Value> = request
            .ids
            .iter()
            .map(|id| {
                store
                    .get(object, id)
                    .map(|r| r.to_json(&v, fields.as_deref()))
                    .unwrap_or(Value::Null)
            })
            .collect();
        Ok(Json(Value::Array(rows)))
    })())
}

/// Errors of the `/__sim/` routes: plain JSON, they are not Salesforce's.
fn sim_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn add_outbound_message(State(shared): SimState, body: Bytes) -> Response {
    let config: OutboundMessage = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => return sim_error(StatusCode::BAD_REQUEST, e),
    };
    match shared.notifier.add_outbound_message(config) {
        Ok(action_id) => status_json(StatusCode::CREATED, json!({ "actionId": action_id })),
        Err(e) => sim_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn list_outbound_messages(State(shared): SimState) -> Json<Value> {
    Json(json!(shared.notifier.outbound_messages()))
}

async fn add_change_events(State(shared): SimState, body: Bytes) -> Response {
    let endpoint: ChangeEventEndpoint = match serde_json::from_slice(&body) {
        Ok(endpoint) => endpoint,
        Err(e) => return sim_error(StatusCode::BAD_REQUEST, e),
    };
    match shared.notifier.add_change_event_endpoint(endpoint) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => sim_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn list_change_events(State(shared): SimState) -> Json<Value> {
    Json(json!(shared.notifier.change_event_endpoints()))
}

async fn expire_tokens(State(shared): SimState) -> StatusCode {
    shared.auth.expire_all();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Default, Deserialize)]
struct LockBody {
    times: Option<u32>,
}

async fn lock(State(shared): SimState, Path(id): Path<String>, body: Bytes) -> Response {
    let request: LockBody = if body.is_empty() {
        LockBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => return sim_error(StatusCode::BAD_REQUEST, e),
        }
    };
    shared
        .store
        .write()
        .expect("store lock")
        .lock(&id, request.times);
    StatusCode::NO_CONTENT.into_response()
}

async fn unlock(State(shared): SimState, Path(id): Path<String>) -> StatusCode {
    shared.store.write().expect("store lock").unlock(&id);
    StatusCode::NO_CONTENT
}

async fn set_api_usage(
    State(shared): SimState,
    Json(body): Json<HashMap<String, u64>>,
) -> Response {
    match body.get("used") {
        Some(&used) => {
            shared
                .api_used
                .store(used, std::sync::atomic::Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        None => sim_error(StatusCode::BAD_REQUEST, "expected {\"used\": N}"),
    }
}

/// Seed a record without a session or API usage, as a UI user would create it.
async fn sim_insert(State(shared): SimState, Path(ty): Path<String>, body: Bytes) -> Response {
    let outcome =
        parse_object(&body).and_then(|body| shared.commit("", |store| store.create(&ty, &body)));
    match outcome {
        Ok(id) => status_json(
            StatusCode::CREATED,
            json!({ "id": id, "success": true, "errors": [] }),
        ),
        Err(error) => error.into_response(),
    }
}
