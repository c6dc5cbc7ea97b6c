//! The rule studio's requests (`crate::api::studio`): one counter by route
//! and HTTP status, both from fixed sets.

/// `vitrine_studio_requests_total{route, code}`
pub const STUDIO_REQUESTS: &str = "vitrine_studio_requests_total";

/// Describes the studio's metric (once, at start-up).
pub(super) fn describe() {
    metrics::describe_counter!(
        STUDIO_REQUESTS,
        "Is the rule studio used, and does it fail? Studio requests on the HTTP port by route (static, info, shops, rules, revisions, validate, publish, rollback, try, lift, unknown) and code (the HTTP status: 200, 400, 401, 404, 408, 409, 412, 413, 415, ...)."
    );
}

/// Counts one studio request answered with `status`.
pub fn request(route: &'static str, status: http::StatusCode) {
    metrics::counter!(STUDIO_REQUESTS, "route" => route, "code" => status_label(status)).increment(1);
}

/// The label of a status: its three digits, from a fixed set.
fn status_label(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        412 => "412",
        413 => "413",
        415 => "415",
        429 => "429",
        503 => "503",
        504 => "504",
        _ if status.is_success() => "2xx",
        _ if status.is_client_error() => "4xx",
        _ => "500",
    }
}
