//! Salesforce's error answers: the `[{"message","errorCode","fields"}]` array on REST calls and the
//! `{"statusCode","message","fields"}` item inside sObject Collection results.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The error codes the emulator answers with, spelled as Salesforce spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    AllOrNoneOperationRolledBack,
    DuplicateValue,
    EntityIsDeleted,
    ExceededIdLimit,
    FieldIntegrityException,
    InvalidCrossReferenceKey,
    InvalidField,
    InvalidFieldForInsertUpdate,
    InvalidOrNullForRestrictedPicklist,
    InvalidQueryFilterOperator,
    InvalidQueryLocator,
    InvalidSessionId,
    InvalidType,
    JsonParserError,
    MalformedId,
    MalformedQuery,
    MissingArgument,
    NotFound,
    RequestLimitExceeded,
    RequiredFieldMissing,
    StringTooLong,
    UnableToLockRow,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AllOrNoneOperationRolledBack => "ALL_OR_NONE_OPERATION_ROLLED_BACK",
            ErrorCode::DuplicateValue => "DUPLICATE_VALUE",
            ErrorCode::EntityIsDeleted => "ENTITY_IS_DELETED",
            ErrorCode::ExceededIdLimit => "EXCEEDED_ID_LIMIT",
            ErrorCode::FieldIntegrityException => "FIELD_INTEGRITY_EXCEPTION",
            ErrorCode::InvalidCrossReferenceKey => "INVALID_CROSS_REFERENCE_KEY",
            ErrorCode::InvalidField => "INVALID_FIELD",
            ErrorCode::InvalidFieldForInsertUpdate => "INVALID_FIELD_FOR_INSERT_UPDATE",
            ErrorCode::InvalidOrNullForRestrictedPicklist => {
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
            }
            ErrorCode::InvalidQueryFilterOperator => "INVALID_QUERY_FILTER_OPERATOR",
            ErrorCode::InvalidQueryLocator => "INVALID_QUERY_LOCATOR",
            ErrorCode::InvalidSessionId => "INVALID_SESSION_ID",
            ErrorCode::InvalidType => "INVALID_TYPE",
            ErrorCode::JsonParserError => "JSON_PARSER_ERROR",
            ErrorCode::MalformedId => "MALFORMED_ID",
            ErrorCode::MalformedQuery => "MALFORMED_QUERY",
            ErrorCode::MissingArgument => "MISSING_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RequestLimitExceeded => "REQUEST_LIMIT_EXCEEDED",
            ErrorCode::RequiredFieldMissing => "REQUIRED_FIELD_MISSING",
            ErrorCode::StringTooLong => "STRING_TOO_LONG",
            ErrorCode::UnableToLockRow => "UNABLE_TO_LOCK_ROW",
        }
    }
}

/// One Salesforce error with the HTTP status it is answered with on a single-record call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct SfError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub fields: Vec<String>,
}

impl SfError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> SfError {
        SfError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> SfError {
        SfError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_fields(mut self, fields: impl IntoIterator<Item = impl Into<String>>) -> SfError {
        self.fields = fields.into_iter().map(Into::into).collect();
        self
    }

    pub fn not_found() -> SfError {
        SfError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "The requested resource does not exist",
        )
    }

    pub fn malformed_query(message: impl Into<String>) -> SfError {
        SfError::bad_request(ErrorCode::MalformedQuery, message)
    }

    pub fn json(message: impl Into<String>) -> SfError {
        SfError::bad_request(ErrorCode::JsonParserError, message)
    }

    pub fn session() -> SfError {
        SfError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidSessionId,
            "Session expired or invalid",
        )
    }

    /// The element of a REST error array.
    pub fn rest_item(&self) -> Value {
        json!({ "message": self.message, "errorCode": self.code.as_str(), "fields": self.fields })
    }

    /// The element of an sObject Collection result's `errors`: `statusCode`, not `errorCode`.
    pub fn collection_item(&self) -> Value {
        json!({ "statusCode": self.code.as_str(), "message": self.message, "fields": self.fields })
    }
}

impl IntoResponse for SfError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!([self.rest_item()]))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Salesforce names its scheme on 401s (unconfirmed on every path; harmless).
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
        }
        response
    }
}
