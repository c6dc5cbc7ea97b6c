//! The studio API's JSON: request bodies, the error body, and the gRPC
//! responses as JSON objects (docs/studio.md has every shape).

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::{Code, Status};
use vitrine_core::rules::yaml::{self, Node};
use vitrine_proto::v1 as pb;

use crate::rules_store::StoreError;

/// Most query parameters read from one request; more is a 400.
pub const MAX_QUERY_PARAMS: usize = 16;

/// A failed studio request: its HTTP status, the gRPC code name (or one of
/// the studio's own: `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_MEDIA_TYPE`), the
/// message, and for a rejected rule file every error at its position.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `INVALID_ARGUMENT`, `UNAUTHENTICATED`, ...
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// A rule file's errors, when the request failed on one.
    pub errors: Option<RuleFileErrors>,
}

/// A rule file's errors as the compiler reports them: the first ones (at
/// most `--max-rule-errors`) and how many more were only counted.
#[derive(Debug, Clone, Default)]
pub struct RuleFileErrors {
    /// `(line, column, message)`, 1-based, in file order.
    pub errors: Vec<(u32, u32, String)>,
    /// Errors past the bound, only counted.
    pub omitted: usize,
}

impl RuleFileErrors {
    /// The list as JSON: `[{"line","column","message"}]`.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.errors
                .iter()
                .map(|(line, column, message)| json!({"line": line, "column": column, "message": message}))
                .collect(),
        )
    }
}

impl ApiError {
    /// An error of the studio itself (not of a gRPC call).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: crate::api::grpc::bounded_message(message.into()),
            errors: None,
        }
    }

    /// A 400 `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    /// The error body.
    pub fn to_json(&self) -> Value {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(errors) = &self.errors {
            body["errors"] = errors.to_json();
            if errors.omitted > 0 {
                body["omitted"] = json!(errors.omitted);
            }
        }
        body
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        let (http, code) = status_of(status.code());
        ApiError {
            status: http,
            code,
            message: status.message().to_string(),
            errors: None,
        }
    }
}

/// The HTTP status and name of a gRPC code.
pub fn status_of(code: Code) -> (StatusCode, &'static str) {
    let internal = StatusCode::INTERNAL_SERVER_ERROR;
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "FAILED_PRECONDITION"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::Cancelled => (internal, "CANCELLED"),
        Code::Unknown => (internal, "UNKNOWN"),
        Code::DeadlineExceeded => (internal, "DEADLINE_EXCEEDED"),
        Code::AlreadyExists => (internal, "ALREADY_EXISTS"),
        Code::PermissionDenied => (internal, "PERMISSION_DENIED"),
        Code::OutOfRange => (internal, "OUT_OF_RANGE"),
        Code::Unimplemented => (internal, "UNIMPLEMENTED"),
        Code::Internal => (internal, "INTERNAL"),
        Code::DataLoss => (internal, "DATA_LOSS"),
    }
}

/// `{"content","shop"}` (validate) and `{"content","expected_revision","shop"}` (publish).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContentBody {
    /// The rule file's YAML text.
    pub content: Option<String>,
    /// Publish only over this revision (0 or absent: any).
    pub expected_revision: Option<u64>,
    /// Validate or publish only if the file is this shop's (absent or empty: any). A
    /// revision number means something only for its shop: without this, a
    /// file whose `shop:` names another shop would be published over that
    /// shop whenever its revision happened to equal `expected_revision`.
    pub shop: Option<String>,
}

/// `{"shop","revision","expected_revision"}` (rollback).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RollbackBody {
    /// The shop.
    pub shop: Option<String>,
    /// The revision to serve again.
    pub revision: Option<u64>,
    /// Roll back only over this revision (0 or absent: any).
    pub expected_revision: Option<u64>,
}

/// The `context` of a try: Decide's context fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContextBody {
    /// The page type.
    pub page: Option<String>,
    /// The item on the page.
    pub item: Option<String>,
    /// The visitor's region.
    pub region: Option<String>,
    /// The visitor's device.
    pub device: Option<String>,
    /// The channel.
    pub channel: Option<String>,
    /// Free attributes, read by `ctx.NAME`.
    pub attributes: Option<HashMap<String, String>>,
}

/// `{"shop","visitor","context","now_ms","item_limit","draft"}` (try).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TryBody {
    /// The shop.
    pub shop: Option<String>,
    /// The visitor (empty: an anonymous one).
    pub visitor: Option<String>,
    /// Decide's context.
    pub context: Option<ContextBody>,
    /// The instant (ms); 0 or absent: the server clock.
    pub now_ms: Option<i64>,
    /// Items wanted (0 or absent: the file's limit).
    pub item_limit: Option<u32>,
    /// A rule file to decide with beside the serving one.
    pub draft: Option<String>,
}

impl TryBody {
    /// The Decide request it describes (the draft apart).
    pub fn decide_request(&mut self) -> pb::DecideRequest {
        let context = self.context.take().map(|c| pb::Context {
            page: c.page.unwrap_or_default(),
            item: c.item.unwrap_or_default(),
            region: c.region.unwrap_or_default(),
            device: c.device.unwrap_or_default(),
            channel: c.channel.unwrap_or_default(),
            attributes: c.attributes.unwrap_or_default(),
        });
        pb::DecideRequest {
            shop: self.shop.take().unwrap_or_default(),
            visitor: self.visitor.take().unwrap_or_default(),
            context,
            item_limit: self.item_limit.unwrap_or(0),
            explain: true,
            now_ms: self.now_ms.unwrap_or(0),
        }
    }
}

/// A map with its keys sorted, so the JSON is the same every time.
fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A decision: `{"revision","banner","items","benefit","tier_preview","add_on_gap","explanation"}`.
pub fn decision(d: &pb::DecideResponse) -> Value {
    json!({
        "revision": d.rule_revision,
        "banner": d.banner.as_ref().map(|b| json!({"id": b.id, "params": sorted(&b.params)})),
        "items": d.items.iter().map(|i| json!({"id": i.id, "reason": i.reason})).collect::<Vec<_>>(),
        "benefit": d.benefit.as_ref().map(|b| json!({
            "id": b.id,
            "kind": b.kind,
            "params": sorted(&b.params),
            "remaining": b.remaining,
        })),
        "tier_preview": d.tier_preview.as_ref().map(|t| json!({
            "tier": t.tier,
            "name": t.name,
            "next_tier": (t.next_tier != 0).then_some(t.next_tier),
            "next_name": (t.next_tier != 0).then_some(&t.next_name),
            "gap": t.gap,
        })),
        "add_on_gap": d.add_on_gap,
        "explanation": d.explanation.as_ref().map(|e| json!({
            "audiences": e.audiences,
            "steps": e.steps.iter().map(|s| json!({
                "slot": s.slot,
                "entry": s.entry,
                "outcome": s.outcome,
            })).collect::<Vec<_>>(),
        })),
    })
}

/// A push's answer, each audience with the line it is defined on.
pub fn pushed(r: &pb::PushResponse, lines: &HashMap<String, u32>) -> Value {
    json!({
        "shop": r.shop,
        "revision": r.revision,
        "dry_run": r.dry_run,
        "audiences": r.audiences.iter().map(|a| json!({
            "name": a.name,
            "size": a.size,
            "sizable": a.sizable,
            "line": lines.get(&a.name),
        })).collect::<Vec<_>>(),
    })
}

/// A lift report.
pub fn lift(r: &pb::LiftResponse) -> Value {
    json!({
        "shop": r.shop,
        "rule_revision": r.rule_revision,
        "rows": r.rows.iter().map(|row| json!({
            "slot": row.slot,
            "id": row.id,
            "treated": row.treated,
            "control": row.control,
            "treated_converted": row.treated_converted,
            "control_converted": row.control_converted,
            "treated_rate": row.treated_rate,
            "control_rate": row.control_rate,
            "lift": row.lift,
            "ci_low": row.ci_low,
            "ci_high": row.ci_high,
            "treated_spend": row.treated_spend,
            "control_spend": row.control_spend,
        })).collect::<Vec<_>>(),
    })
}

/// The top-level mapping of a rule file, parsed as the compiler parses it
/// (within `max_depth`); `None` when it is not one.
fn top_level(content: &str, max_depth: usize) -> Option<Vec<(Node, Node)>> {
    match yaml::parse_with(yaml::strip_bom(content), max_depth) {
        Ok(Some(Node::Map { entries, .. })) => Some(entries),
        _ => None,
    }
}

/// The 1-based line each audience of a rule file is defined on.
pub fn audience_lines(content: &str, max_depth: usize) -> HashMap<String, u32> {
    let mut lines = HashMap::new();
    let Some(top) = top_level(content, max_depth) else {
        return lines;
    };
    for (key, value) in &top {
        if key.as_str() != Some("audiences") {
            continue;
        }
        if let Node::Map { entries, .. } = value {
            for (key, _) in entries {
                if let Some(name) = key.as_str() {
                    lines.entry(name.to_string()).or_insert(key.pos().line);
                }
            }
        }
    }
    lines
}

/// The errors of a rule file the store refused, each at its position; `None`
/// when the refusal is not about the file's text. A refused shop name is
/// placed at the `shop:` value.
pub fn rule_file_errors(e: &StoreError, content: &str, max_depth: usize) -> Option<RuleFileErrors> {
    match e {
        StoreError::Invalid(errors) => Some(RuleFileErrors {
            errors: errors
                .errors()
                .iter()
                .map(|e| (e.pos.line, e.pos.column, e.message.clone()))
                .collect(),
            omitted: errors.omitted(),
        }),
        StoreError::InvalidShop(message) => {
            let pos = top_level(content, max_depth)
                .and_then(|top| {
                    top.iter()
                        .find(|(k, _)| k.as_str() == Some("shop"))
                        .map(|(_, v)| v.pos())
                })
                .unwrap_or(yaml::Pos { line: 1, column: 1 });
            Some(RuleFileErrors {
                errors: vec![(pos.line, pos.column, message.clone())],
                omitted: 0,
            })
        }
        _ => None,
    }
}

/// The refusal of a validate or publish meant for `opened` of a file whose `shop:` names
/// `named`, placed at the `shop:` value.
pub fn other_shop(opened: &str, named: &str, content: &str, max_depth: usize) -> ApiError {
    let message = format!(
        "the file is the rule file of shop `{named}`, not of `{opened}` (the shop it is published for): nothing changed"
    );
    let pos = top_level(content, max_depth)
        .and_then(|top| {
            top.iter()
                .find(|(k, _)| k.as_str() == Some("shop"))
                .map(|(_, v)| v.pos())
        })
        .unwrap_or(yaml::Pos { line: 1, column: 1 });
    let mut error = ApiError::invalid(message.clone());
    error.errors = Some(RuleFileErrors {
        errors: vec![(pos.line, pos.column, message)],
        omitted: 0,
    });
    error
}

/// The parameters of a query string, percent-decoded (`+` is a space), in
/// order; at most [`MAX_QUERY_PARAMS`].
pub fn query_params(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut params = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if params.len() == MAX_QUERY_PARAMS {
            return Err(ApiError::invalid(format!(
                "more than {MAX_QUERY_PARAMS} query parameters"
            )));
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(params)
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::invalid("malformed percent-encoding in the query string"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid("the query string is not UTF-8 once decoded"))
}

/// The value of query parameter `name` (the first one), if present.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Query parameter `name` as a whole number (absent: 0).
pub fn number_param<T: std::str::FromStr + Default>(params: &[(String, String)], name: &str) -> Result<T, ApiError> {
    match param(params, name) {
        None | Some("") => Ok(T::default()),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::invalid(format!("`{name}` must be a whole number, not `{}`", clip(v)))),
    }
}

/// The first 64 characters of a value echoed in a message.
fn clip(v: &str) -> String {
    let mut s: String = v.chars().take(64).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded_and_bounded() {
        let p = query_params(Some("shop=demo%2Dapparel&revision=3&x&window=7+d")).unwrap();
        assert_eq!(param(&p, "shop"), Some("demo-apparel"));
        assert_eq!(number_param::<u64>(&p, "revision").unwrap(), 3);
        assert_eq!(param(&p, "x"), Some(""));
        assert_eq!(param(&p, "window"), Some("7 d"));
        assert_eq!(number_param::<u64>(&p, "missing").unwrap(), 0);
        assert!(query_params(Some("shop=%zz")).is_err());
        assert!(query_params(Some("shop=%e")).is_err());
        assert!(query_params(Some("shop=%ff")).is_err(), "not UTF-8");
        let many = vec!["a=1"; MAX_QUERY_PARAMS + 1].join("&");
        assert!(query_params(Some(&many)).is_err());
        let e = number_param::<u64>(&query_params(Some("revision=-1")).unwrap(), "revision").unwrap_err();
        assert_eq!(e.message, "`revision` must be a whole number, not `-1`");
    }

    #[test]
    fn audiences_are_found_at_their_lines() {
        let content = "shop: s\n\naudiences:\n  vip: member_tier >= 4\n  # a comment\n  new: days_since(view) < 1\n";
        let lines = audience_lines(content, 64);
        assert_eq!(lines.get("vip"), Some(&4));
        assert_eq!(lines.get("new"), Some(&6));
        assert!(audience_lines("- not a mapping", 64).is_empty());
    }
}
