//! The rule studio: a page at `/studio` on the HTTP port, and the JSON API
//! under `/studio/api/` it talks to (docs/studio.md is the reference).
//!
//! The key design choice: the API is a thin JSON layer over the gRPC
//! services themselves. Each call builds the gRPC request, copies the HTTP
//! request's `Authorization` header into its metadata, and calls the
//! service's trait method (`Rules::push`, `Rules::get`, `Reports::lift`,
//! ...), so what is valid, who may write, `--shops`, the rules topic of a
//! cluster, the metrics and the error codes are exactly those of gRPC; a
//! `tonic::Status` becomes an HTTP status and a JSON error. Only where
//! gRPC has no call does the studio reach the engine, through the same
//! functions gRPC uses: the shop list (the rule store), a rejected file's
//! errors with their positions (the store's compiler), and "try a visitor"
//! (`grpc::decide_unlogged`: Decide without the decision log, so trying
//! writes no exposure and leaves the lift alone).
//!
//! Hostile input: a POST body is read only when its `Content-Type` is
//! `application/json` (415 otherwise: an HTML form cannot send one, so a
//! page elsewhere cannot make a logged-in browser publish), only up to
//! `--studio-max-body` (413) and only within `--request-timeout` (408); unknown fields are skipped (serde_json does
//! so without recursing, and the request types nest two levels), and every
//! field is then bounded by the gRPC call it feeds. Compiling and sizing run on the blocking pool. The page's
//! files are compiled into the binary and served with a strict
//! Content-Security-Policy: the page loads nothing from elsewhere.

pub mod json;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use vitrine_proto::v1 as pb;
use vitrine_proto::v1::reports_server::Reports as _;
use vitrine_proto::v1::rules_server::Rules as _;

use crate::api::grpc::{self, Service};
use crate::metrics::studio as metrics;
use json::{number_param, param, query_params, ApiError};

/// The page.
const INDEX_HTML: &str = include_str!("../../../studio/index.html");
/// The page's script.
const STUDIO_JS: &str = include_str!("../../../studio/studio.js");
/// The page's style sheet.
const STUDIO_CSS: &str = include_str!("../../../studio/studio.css");

/// The Content-Security-Policy of the page: everything from this server, nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The studio over the gRPC services.
#[derive(Debug, Clone)]
pub struct Studio {
    service: Service,
    max_body: usize,
    body_timeout: Duration,
    /// Rule files being compiled for validate, publish and try at once
    /// (`--studio-max-compiles`): a try needs no token, so without a bound
    /// anyone reaching the HTTP port could keep every core compiling
    /// 1 MiB drafts while Decide waits.
    compiles: Arc<Semaphore>,
}

impl Studio {
    /// The studio over `service`, reading request bodies of up to
    /// `max_body` bytes that arrive within `body_timeout`, compiling at
    /// most `max_compiles` files at once.
    pub fn new(service: Service, max_body: usize, body_timeout: Duration, max_compiles: usize) -> Studio {
        Studio {
            service,
            max_body,
            body_timeout,
            compiles: Arc::new(Semaphore::new(max_compiles.max(1))),
        }
    }

    /// A turn to compile: waits up to `--request-timeout` for one of the
    /// `--studio-max-compiles` turns, then 429 RESOURCE_EXHAUSTED.
    async fn compile_turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        compile_turn(&self.compiles, self.body_timeout).await
    }

    fn engine(&self) -> &crate::state::Engine {
        self.service.engine()
    }

    fn max_yaml_depth(&self) -> usize {
        self.engine().rules.limits().max_yaml_depth
    }
}

async fn compile_turn(compiles: &Arc<Semaphore>, wait: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(wait, compiles.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "the studio is compiling as many rule files as --studio-max-compiles allows; try again",
        )),
    }
}

/// The studio's routes: the page's files and the JSON API.
pub fn routes(studio: Studio) -> Router {
    let max_body = studio.max_body;
    Router::new()
        .route("/studio", get(page))
        .route("/studio/", get(page))
        .route("/studio/studio.js", get(script))
        .route("/studio/studio.css", get(style))
        .route("/studio/api/info", get(info))
        .route("/studio/api/shops", get(shops))
        .route("/studio/api/rules", get(rules))
        .route("/studio/api/revisions", get(revisions))
        .route("/studio/api/lift", get(lift))
        .route("/studio/api/validate", post(validate))
        .route("/studio/api/publish", post(publish))
        .route("/studio/api/rollback", post(rollback))
        .route("/studio/api/try", post(try_visitor))
        .route("/studio/api/{*rest}", any(unknown))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(studio)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    metrics::request("static", StatusCode::OK);
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(STUDIO_JS, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STUDIO_CSS, "text/css; charset=utf-8")
}

/// The JSON answer of `route`, counted.
fn reply(route: &'static str, result: Result<Value, ApiError>) -> Response {
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (e.status, e.to_json()),
    };
    metrics::request(route, status);
    let body = serde_json::to_vec(&body)
        .unwrap_or_else(|_| br#"{"code":"INTERNAL","message":"cannot encode the answer"}"#.to_vec());
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn unknown() -> Response {
    reply(
        "unknown",
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such studio API route (docs/studio.md lists them)",
        )),
    )
}

/// A gRPC request carrying the HTTP request's bearer token, if it has one.
fn grpc_request<T>(authorization: Option<&HeaderValue>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>().ok());
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }
    request
}

/// A POST's JSON body, with its `Authorization` header: 415 unless it is
/// `application/json`, 413 past `--studio-max-body`, 408 when it has not
/// arrived within `--request-timeout` (a body trickled in would otherwise
/// hold one of the HTTP port's connections, which the probes share), 400
/// when malformed.
async fn json_body<T: DeserializeOwned>(s: &Studio, request: Request) -> Result<(Option<HeaderValue>, T), ApiError> {
    let headers: &HeaderMap = request.headers();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let read = tokio::time::timeout(s.body_timeout, Bytes::from_request(request, &()));
    let bytes = read.await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "the request body did not arrive within --request-timeout",
        )
    })?;
    let bytes = bytes.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than --studio-max-body",
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {rejection}"))
        }
    })?;
    let body = serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))?;
    Ok((authorization, body))
}

async fn info(State(s): State<Studio>) -> Response {
    reply(
        "info",
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "token_required": s.service.token_required(),
            "now_ms": crate::clock::now_ms(),
            "max_body": s.max_body,
        })),
    )
}

async fn shops(State(s): State<Studio>) -> Response {
    let engine = s.engine();
    let shops: Vec<Value> = engine
        .rules
        .shops()
        .into_iter()
        .filter(|(shop, _)| engine.cluster.shops.serves(shop))
        .filter_map(|(shop, _)| {
            let served = engine.rules.serving(&shop)?;
            Some(json!({
                "shop": shop,
                "revision": served.revision,
                "timezone": served.rules.zone.name(),
            }))
        })
        .collect();
    reply("shops", Ok(json!({ "shops": shops })))
}

async fn rules(State(s): State<Studio>, RawQuery(query): RawQuery) -> Response {
    let result = async {
        let params = query_params(query.as_deref())?;
        let request = pb::GetRequest {
            shop: param(&params, "shop").unwrap_or_default().to_string(),
            revision: number_param(&params, "revision")?,
        };
        let r = s.service.get(tonic::Request::new(request)).await?.into_inner();
        Ok(json!({
            "shop": r.shop,
            "revision": r.revision,
            "content": r.content,
            "serving": r.serving,
        }))
    };
    reply("rules", result.await)
}

async fn revisions(State(s): State<Studio>, RawQuery(query): RawQuery) -> Response {
    let result = async {
        let params = query_params(query.as_deref())?;
        let request = pb::ListRequest {
            shop: param(&params, "shop").unwrap_or_default().to_string(),
        };
        let r = s.service.list(tonic::Request::new(request)).await?.into_inner();
        // Newest first: the order an author reads history in.
        let revisions: Vec<Value> = r
            .revisions
            .iter()
            .rev()
            .map(|v| {
                json!({
                    "revision": v.revision,
                    "created_ms": v.created_ms,
                    "origin": v.origin,
                    "serving": v.serving,
                })
            })
            .collect();
        Ok(json!({ "shop": r.shop, "revisions": revisions }))
    };
    reply("revisions", result.await)
}

async fn lift(State(s): State<Studio>, RawQuery(query): RawQuery) -> Response {
    let result = async {
        let params = query_params(query.as_deref())?;
        let text = |name| param(&params, name).unwrap_or_default().to_string();
        let request = pb::LiftRequest {
            shop: text("shop"),
            id: text("id"),
            window: text("window"),
            from_ms: number_param(&params, "from_ms")?,
            to_ms: number_param(&params, "to_ms")?,
        };
        let r = s.service.lift(tonic::Request::new(request)).await?.into_inner();
        Ok(json::lift(&r))
    };
    reply("lift", result.await)
}

async fn validate(State(s): State<Studio>, request: Request) -> Response {
    reply("validate", push(&s, request, true).await)
}

async fn publish(State(s): State<Studio>, request: Request) -> Response {
    reply("publish", push(&s, request, false).await)
}

/// Rules/Push (a dry run for validate), its audiences placed at their lines;
/// a rejected file answers 400 with every error at its position.
async fn push(s: &Studio, request: Request, dry_run: bool) -> Result<Value, ApiError> {
    let (authorization, body): (_, json::ContentBody) = json_body(s, request).await?;
    let _turn = s.compile_turn().await?;
    let content = body.content.unwrap_or_default();
    // Compiled here at most once: for the opened shop's check before the
    // push, and for a rejected file's positions after it.
    let mut checked = None;
    if let Some(opened) = body.shop.filter(|shop| !shop.is_empty()) {
        let compiled = compile(s, &content).await?;
        if let Ok(named) = &compiled {
            // A file that does not compile passes: Push then answers with
            // its errors (or the token it lacks).
            if **named != *opened {
                return Err(json::other_shop(&opened, named, &content, s.max_yaml_depth()));
            }
        }
        checked = Some(compiled);
    }
    let request = pb::PushRequest {
        content: content.clone(),
        dry_run,
        expected_revision: if dry_run {
            0
        } else {
            body.expected_revision.unwrap_or(0)
        },
    };
    let pushed = s.service.push(grpc_request(authorization.as_ref(), request)).await;
    match pushed {
        Ok(r) => {
            let r = r.into_inner();
            let max_depth = s.max_yaml_depth();
            let lines = grpc::blocking("Studio", move || Ok(json::audience_lines(&content, max_depth))).await?;
            Ok(json::pushed(&r, &lines))
        }
        // The compiler's errors with their positions: the status carries
        // them as text only.
        Err(status) if status.code() == Code::InvalidArgument && !content.trim().is_empty() => {
            let compiled = match checked {
                Some(compiled) => compiled,
                None => compile(s, &content).await?,
            };
            let mut error = ApiError::from(status);
            error.errors = compiled.err().flatten();
            Err(error)
        }
        Err(status) => Err(status.into()),
    }
}

/// `content` compiled by the store's compiler: the shop it names, or its
/// errors at their positions (`None` for a refusal that is not the file's).
async fn compile(s: &Studio, content: &str) -> Result<Result<Arc<str>, Option<json::RuleFileErrors>>, ApiError> {
    let engine = s.service.engine().clone();
    let max_depth = s.max_yaml_depth();
    let content = content.to_string();
    let compiled = grpc::blocking("Studio", move || {
        Ok(match engine.rules.compile(&content) {
            Ok(rules) => Ok(rules.shop.clone()),
            Err(e) => Err(json::rule_file_errors(&e, &content, max_depth)),
        })
    })
    .await?;
    Ok(compiled)
}

async fn rollback(State(s): State<Studio>, request: Request) -> Response {
    let result = async {
        let (authorization, body): (_, json::RollbackBody) = json_body(&s, request).await?;
        let request = pb::RollbackRequest {
            shop: body.shop.unwrap_or_default(),
            revision: body.revision.unwrap_or(0),
            expected_revision: body.expected_revision.unwrap_or(0),
        };
        let r = s
            .service
            .rollback(grpc_request(authorization.as_ref(), request))
            .await?
            .into_inner();
        Ok(json!({
            "shop": r.shop,
            "revision": r.revision,
            "restored_from": r.restored_from,
        }))
    };
    reply("rollback", result.await)
}

/// "Try a visitor": the serving decision and the draft's, side by side,
/// neither logged. A draft that does not compile answers 200 with its
/// errors in `draft_errors` (the serving side still decided).
async fn try_visitor(State(s): State<Studio>, request: Request) -> Response {
    let result = async {
        let (_, mut body): (_, json::TryBody) = json_body(&s, request).await?;
        let _turn = s.compile_turn().await?;
        let request = body.decide_request();
        let draft = body.draft.take().filter(|d| !d.trim().is_empty());
        let engine = s.service.engine().clone();
        let max_depth = s.max_yaml_depth();
        grpc::blocking("Studio", move || {
            let mut draft_errors = None;
            let compiled = match &draft {
                None => None,
                Some(text) => match engine.rules.compile(text) {
                    Ok(rules) => Some(rules),
                    Err(e) => match json::rule_file_errors(&e, text, max_depth) {
                        Some(errors) => {
                            draft_errors = Some(errors);
                            None
                        }
                        None => return Err(grpc::store_status(e)),
                    },
                },
            };
            let tried = grpc::decide_unlogged(&engine, &request, compiled.as_ref())?;
            let mut body = json!({
                "now_ms": tried.now_ms,
                "serving": tried.serving.as_ref().map(json::decision),
                "draft": tried.draft.as_ref().map(json::decision),
                "draft_errors": draft_errors.as_ref().map(json::RuleFileErrors::to_json),
            });
            if let Some(omitted) = draft_errors.map(|e| e.omitted).filter(|n| *n > 0) {
                body["draft_omitted"] = json!(omitted);
            }
            Ok(body)
        })
        .await
        .map_err(ApiError::from)
    };
    reply("try", result.await)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// With every turn taken, a compile waits its bound and gets 429; a
    /// turn given back is taken again.
    #[tokio::test]
    async fn compiles_past_the_bound_wait_then_get_429() {
        let compiles = Arc::new(Semaphore::new(1));
        let held = compile_turn(&compiles, Duration::from_secs(5)).await.unwrap();
        let refused = compile_turn(&compiles, Duration::from_millis(1)).await.unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED")
        );
        drop(held);
        let _again = compile_turn(&compiles, Duration::from_secs(5)).await.unwrap();
    }
}
