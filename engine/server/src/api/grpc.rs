//! The gRPC services of `proto/vitrine/v1/vitrine.proto`: request
//! validation, status codes, admin authorization, and the mapping between
//! the wire messages and the engine core. Load shedding happens before a
//! call gets here (`transport`).
//!
//! Status codes: user errors (a missing field, a broken rule file, a bad
//! expression) are INVALID_ARGUMENT with a precise message; unknown shops,
//! benefits and revisions are NOT_FOUND; internal failures are INTERNAL with
//! no panic text.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use vitrine_core::eval::decide::{ClaimError, Slot};
use vitrine_core::eval::size::size_of_with;
use vitrine_core::event::{Fields, MAX_TS};
use vitrine_core::{audience_sizes, ClaimRequest, Context, DecideRequest, SizeError};
use vitrine_proto::v1 as pb;

use crate::clock::at;
use crate::cluster::{self, rules::Op, rules::Refusal, rules::RuleRecord};
use crate::metrics::{self, PushResult};
use crate::rules_store::{Applied, Origin, Served, StoreError};
use crate::state::Engine;

/// The longest shop, visitor, benefit or claim id accepted (the same bound
/// as every id of an event).
pub use vitrine_core::event::MAX_ID_BYTES;
/// The most bytes of a status message as sent: `grpc-message` is
/// percent-encoded (a byte outside printable ASCII takes three), and
/// clients refuse header lists past 16 KiB (h2 and grpc-go's default).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 8 * 1024;
/// The most events one Track call may carry.
pub const MAX_TRACK_EVENTS: usize = 10_000;

/// All of Vitrine's services over one engine.
#[derive(Debug, Clone)]
pub struct Service {
    engine: Arc<Engine>,
    admin_token: Option<Arc<str>>,
}

impl Service {
    /// Services over `engine`; admin calls need `admin_token` when one is set.
    pub fn new(engine: Arc<Engine>, admin_token: Option<String>) -> Service {
        Service {
            engine,
            admin_token: admin_token.map(Into::into),
        }
    }

    /// FAILED_PRECONDITION for a shop outside `--shops`: another replica
    /// group serves it.
    fn check_served(&self, shop: &str) -> Result<(), Status> {
        if self.engine.cluster.shops.serves(shop) {
            return Ok(());
        }
        Err(missing_shop(&self.engine, shop))
    }

    /// Checks the bearer token of an admin call, when one is configured.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.admin_token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this call needs `authorization: Bearer <admin token>`",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs synchronous engine work; a panic becomes INTERNAL without its text.
pub fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R, Status>) -> Result<R, Status> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("{what} panicked");
        Err(Status::internal(format!("internal error in {what}")))
    })
}

/// Runs engine work on the blocking pool (file I/O, bitmap algebra, batches).
pub(crate) async fn blocking<R: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<R, Status> + Send + 'static,
) -> Result<R, Status> {
    tokio::task::spawn_blocking(move || guarded(what, f))
        .await
        .unwrap_or_else(|_| Err(Status::internal(format!("internal error in {what}"))))
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("`{field}` is required")));
    }
    bounded(field, value)
}

fn bounded<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "`{field}` is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(value)
}

fn instant(now_ms: i64) -> Result<i64, Status> {
    if !(0..=MAX_TS).contains(&now_ms) {
        return Err(Status::invalid_argument(format!(
            "`now_ms` must be between 0 (the server clock) and {MAX_TS} (9999-12-31T23:59:59.999Z)"
        )));
    }
    Ok(at(now_ms))
}

/// INVALID_ARGUMENT with `message` cut, at a line where it can, to what a
/// client accepts in one header ([`MAX_STATUS_MESSAGE_BYTES`] encoded).
fn invalid(message: String) -> Status {
    Status::invalid_argument(bounded_message(message))
}

/// `message`, whole when its percent-encoded size fits
/// [`MAX_STATUS_MESSAGE_BYTES`], else its first lines that fit and a last
/// line saying how much was left out.
pub fn bounded_message(message: String) -> String {
    fn encoded(c: char) -> usize {
        if (' '..='~').contains(&c) && c != '%' {
            1
        } else {
            3 * c.len_utf8()
        }
    }
    // Room for the closing line, which is plain ASCII.
    const ROOM: usize = 64;
    let mut size = 0;
    let mut cut = None;
    let mut last_line_end = 0;
    for (i, c) in message.char_indices() {
        if c == '\n' {
            last_line_end = i;
        }
        size += encoded(c);
        if size > MAX_STATUS_MESSAGE_BYTES - ROOM && cut.is_none() {
            cut = Some(if last_line_end > 0 { last_line_end } else { i });
        }
    }
    if size <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let cut = cut.unwrap_or(message.len());
    let left_out = message.len() - cut;
    let mut message = message;
    message.truncate(cut);
    message.push_str(&format!("\n... message cut: {left_out} more bytes"));
    message
}

fn context(c: Option<&pb::Context>) -> Context<'_> {
    match c {
        None => Context::default(),
        Some(c) => Context {
            page: &c.page,
            item: &c.item,
            region: &c.region,
            device: &c.device,
            channel: &c.channel,
            attributes: Some(&c.attributes),
        },
    }
}

fn unknown_shop(shop: &str) -> Status {
    Status::not_found(format!("unknown shop `{shop}`: no rule set has been pushed for it"))
}

/// A shop this replica does not know: FAILED_PRECONDITION when `--shops`
/// leaves it to another replica group, else NOT_FOUND.
fn missing_shop(engine: &Engine, shop: &str) -> Status {
    let shops = &engine.cluster.shops;
    if shops.serves(shop) {
        unknown_shop(shop)
    } else {
        Status::failed_precondition(format!(
            "shop `{shop}` is not served by this replica (--shops {}): send it to the replica group that serves it",
            shops.describe()
        ))
    }
}

/// A rule store error as the Rules service reports it.
pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(errors) => invalid(errors.to_string()),
        StoreError::InvalidShop(message) => invalid(message),
        StoreError::UnknownShop(shop) => unknown_shop(&shop),
        e @ StoreError::UnknownRevision { .. } => Status::not_found(e.to_string()),
        e @ StoreError::RevisionMismatch { .. } => Status::aborted(e.to_string()),
        e @ StoreError::NotServed { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Io(e) => {
            tracing::error!("rule store I/O failed: {e}");
            Status::internal(format!("cannot persist the rule file, nothing changed: {e}"))
        }
        e @ StoreError::History { .. } => {
            tracing::error!("rule store: {e}");
            Status::internal(e.to_string())
        }
        e @ StoreError::ZoneChange { .. } => Status::failed_precondition(e.to_string()),
    }
}

/// Refuses a rollback to a revision whose time zone differs from the zone
/// of the shop's index (`crate::zones`). A revision that cannot be read or
/// compiled passes: the rollback itself reports that.
fn rollback_zone_check(engine: &Engine, shop: &str, to: u64) -> Result<(), StoreError> {
    if engine.index.shop(shop).is_none() {
        return Ok(());
    }
    let Ok((revision, _)) = engine.rules.get(shop, to) else {
        return Ok(());
    };
    match engine.rules.compile(&revision.content) {
        Ok(rules) => crate::zones::check(&engine.index, &rules),
        Err(_) => Ok(()),
    }
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Banner => "banner",
        Slot::Items => "items",
        Slot::Benefit => "benefit",
    }
}

fn decision_response(d: &vitrine_core::Decision<'_>, revision: u64) -> pb::DecideResponse {
    pb::DecideResponse {
        banner: d.banner.map(|id| pb::Banner {
            id: id.to_string(),
            params: d
                .banner_params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        items: d
            .items
            .iter()
            .map(|p| pb::Item {
                id: p.id.to_string(),
                reason: p.reason.as_str().to_string(),
            })
            .collect(),
        benefit: d.benefit.map(|b| pb::Benefit {
            id: b.id.to_string(),
            kind: b.kind.to_string(),
            params: b.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            remaining: d.remaining,
        }),
        rule_revision: revision,
        decision_id: String::new(),
        tier_preview: d.tier_preview.map(|t| pb::TierPreview {
            tier: t.tier,
            name: t.name.to_string(),
            next_tier: t.next.map_or(0, |(n, _)| n),
            next_name: t.next.map_or_else(String::new, |(_, n)| n.to_string()),
            gap: t.gap,
        }),
        add_on_gap: d.add_on_gap,
        explanation: d.explanation.as_ref().map(|e| pb::Explanation {
            audiences: e.audiences.clone(),
            steps: e
                .steps
                .iter()
                .map(|s| pb::ExplainStep {
                    slot: slot_name(s.slot).to_string(),
                    entry: s.entry.clone(),
                    outcome: s.outcome.as_str().to_string(),
                })
                .collect(),
        }),
    }
}

/// The synchronous part of Decide: request checked, decision made, response
/// built. No metrics (see [`decide_measured`]).
pub fn decide(engine: &Engine, req: &pb::DecideRequest) -> Result<pb::DecideResponse, Status> {
    decide_with(engine, req, |_, _, _| {})
}

/// [`decide`], calling `decided` with the shop, its served rule set and the
/// decision before the response is built.
fn decide_with(
    engine: &Engine,
    req: &pb::DecideRequest,
    decided: impl FnOnce(&str, &Served, &vitrine_core::Decision<'_>),
) -> Result<pb::DecideResponse, Status> {
    let shop = required("shop", &req.shop)?;
    let visitor = bounded("visitor", &req.visitor)?;
    let now_ms = instant(req.now_ms)?;
    let index = engine.index.shop(shop);
    engine
        .rules
        .with_serving(shop, |served| {
            let d = vitrine_core::decide(
                &served.rules,
                index.as_deref(),
                &*engine.ledger,
                &DecideRequest {
                    visitor,
                    context: context(req.context.as_ref()),
                    item_limit: req.item_limit,
                    explain: req.explain,
                    now_ms,
                },
            );
            decided(shop, served, &d);
            let mut response = decision_response(&d, served.revision);
            response.decision_id = log_decision(engine, served, visitor, now_ms, &d);
            response
        })
        .ok_or_else(|| missing_shop(engine, shop))
}

/// Takes the decision's id and, with a decision log running, queues its
/// record (never blocking: a full queue drops and counts it), with the
/// entries the visitor was held out from.
#[inline]
fn log_decision(
    engine: &Engine,
    served: &Served,
    visitor: &str,
    now_ms: i64,
    d: &vitrine_core::Decision<'_>,
) -> String {
    let decisions = &engine.decisions;
    let seq = decisions.ids.next();
    if decisions.logging() {
        let rules = &served.rules;
        let (banner, _) = entries(rules, d);
        decisions.offer(crate::decisions::record::Record::new(
            seq,
            now_ms,
            &rules.shop,
            served.revision,
            visitor,
            banner.map(|i| &rules.banners[i].id),
            d.benefit.map(|b| &b.id),
            d.items.iter().map(|p| p.id),
            &d.held_out,
        ));
    }
    decisions.ids.format(seq)
}

/// The entries (indices into the rule set) a decision chose: found by
/// identity, as the decision borrows them from `rules`, so no string is
/// compared or hashed.
#[inline]
fn entries(rules: &vitrine_core::RuleSet, d: &vitrine_core::Decision<'_>) -> (Option<usize>, Option<usize>) {
    let banner = d.banner.and_then(|id| {
        rules
            .banners
            .iter()
            .position(|b| std::ptr::eq(b.id.as_ptr(), id.as_ptr()))
    });
    let benefit = d
        .benefit
        .and_then(|chosen| rules.benefits.iter().position(|b| std::ptr::eq(b, chosen)));
    (banner, benefit)
}

/// [`decide`] with its latency, slot outcomes and chosen entries (per shop)
/// recorded: what the Decide RPC runs between decoding the request and
/// encoding the response.
#[inline]
pub fn decide_measured(engine: &Engine, req: &pb::DecideRequest) -> Result<pb::DecideResponse, Status> {
    let start = Instant::now();
    let response = guarded("Decide", || {
        decide_with(engine, req, |shop, served, d| {
            let (banner, benefit) = entries(&served.rules, d);
            (engine.metrics.shops).decided(shop, served.revision, &served.rules, banner, benefit);
        })
    })?;
    record_decision(&engine.metrics, start, &response);
    Ok(response)
}

/// Records one decision's slot outcomes and its latency since `start`.
#[inline]
pub fn record_decision(m: &crate::metrics::Metrics, start: Instant, response: &pb::DecideResponse) {
    m.banner.record(response.banner.is_some());
    m.items.record(!response.items.is_empty());
    m.benefit.record(response.benefit.is_some());
    m.decide_duration.record(start.elapsed());
}

#[tonic::async_trait]
impl pb::decision_server::Decision for Service {
    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        decide_measured(&self.engine, request.get_ref()).map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::benefits_server::Benefits for Service {
    async fn claim(&self, request: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let req = request.into_inner();
        let (shop, benefit) = (req.shop.clone(), req.benefit_id.clone());
        let engine = self.engine.clone();
        let step = blocking("Claim", move || {
            let shop = required("shop", &req.shop)?;
            let visitor = required("visitor", &req.visitor)?;
            let benefit = required("benefit_id", &req.benefit_id)?;
            let claim_id = bounded("claim_id", &req.claim_id)?;
            let now_ms = instant(req.now_ms)?;
            let served = engine.rules.serving(shop).ok_or_else(|| missing_shop(&engine, shop))?;
            // Hardening #11/#17: no claim while the disk cannot be trusted.
            if let Some(fault) = engine.storage.fault() {
                return Err(Status::unavailable(format!(
                    "storage fault, nothing was granted; restart the server: {fault}"
                )));
            }
            let index = engine.index.shop(shop);
            let request = ClaimRequest {
                visitor,
                benefit,
                now_ms,
                claim_id: (!claim_id.is_empty()).then_some(claim_id),
                context: context(req.context.as_ref()),
            };
            let revision = served.revision;
            let claim_status = |e: ClaimError| claim_status(shop, revision, e);
            let Some(log) = engine.cluster.claims.get() else {
                let outcome = vitrine_core::claim(&served.rules, index.as_deref(), &*engine.ledger, &request)
                    .map_err(claim_status)?;
                return Ok(ClaimStep::Answered(outcome, revision));
            };
            // Cluster: the eligibility checks here, cap, budget and claim_id
            // in the claims topic's order (docs/cluster.md, "Claims").
            if !engine.cluster.shops.serves(shop) {
                return Err(Status::failed_precondition(format!(
                    "this replica serves the shops `{}`, not `{shop}`",
                    engine.cluster.shops.describe()
                )));
            }
            let claim = vitrine_core::prepare_claim(&served.rules, index.as_deref(), &*engine.ledger, &request)
                .map_err(claim_status)?;
            match (claim.denied, claim.claim_id) {
                // Nothing to record: answered at once, as a single replica does.
                (Some(denied), None) => Ok(ClaimStep::Answered(denied, revision)),
                _ => Ok(ClaimStep::Log(
                    log.clone(),
                    crate::cluster::claims::ClaimRecord::of(&claim),
                    revision,
                )),
            }
        })
        .await?;
        let (outcome, revision) = match step {
            ClaimStep::Answered(outcome, revision) => (outcome, revision),
            ClaimStep::Log(log, record, revision) => {
                let answer = log
                    .claim(&record)
                    .await
                    .map_err(|e| Status::unavailable(format!("the claim did not go through the claims topic: {e}")))?;
                let outcome = answer.map_err(|e| match e {
                    // The record was written but could not be applied here.
                    vitrine_core::LedgerError::Failed(why) => Status::internal(why),
                    e => claim_status(&record.shop, revision, ClaimError::Ledger(e)),
                })?;
                (outcome, revision)
            }
        };
        self.engine.metrics.claim(outcome);
        let mut remaining = None;
        if let Some(served) = self.engine.rules.serving(&shop) {
            (self.engine.metrics.shops).claimed(&shop, served.revision, &served.rules, &benefit, outcome);
            remaining = vitrine_core::eval::decide::remaining(&served.rules, &benefit, &*self.engine.ledger);
        }
        Ok(Response::new(pb::ClaimResponse {
            granted: outcome == vitrine_core::ClaimOutcome::Granted,
            reason: outcome.as_str().to_string(),
            rule_revision: revision,
            remaining,
        }))
    }
}

/// Where a Claim stands after its local part.
enum ClaimStep {
    /// Decided here: the outcome, under this revision.
    Answered(vitrine_core::ClaimOutcome, u64),
    /// To be decided by the claims topic.
    Log(
        Arc<crate::cluster::claims::ClaimsLog>,
        crate::cluster::claims::ClaimRecord,
        u64,
    ),
}

fn claim_status(shop: &str, revision: u64, e: ClaimError) -> Status {
    match e {
        ClaimError::UnknownBenefit(id) => {
            Status::not_found(format!("shop `{shop}` has no benefit `{id}` (revision {revision})"))
        }
        ClaimError::MissingVisitor => Status::invalid_argument("`visitor` is required"),
        // Hardening #12: the id answers another visitor's claim.
        ClaimError::Ledger(e @ vitrine_core::LedgerError::ClaimIdInUse { .. }) => Status::already_exists(e.to_string()),
        ClaimError::Ledger(e) => {
            crate::metrics::journal_failed(crate::metrics::Journal::Claims);
            tracing::error!("claim ledger failed: {e}");
            Status::internal("the claim ledger failed; nothing was granted")
        }
    }
}

#[tonic::async_trait]
impl pb::rules_server::Rules for Service {
    async fn push(&self, request: Request<pb::PushRequest>) -> Result<Response<pb::PushResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        if req.content.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`content` is required: the YAML text of a rule file",
            ));
        }
        let engine = self.engine.clone();
        let now_ms = at(0);
        let served = match (req.dry_run, engine.cluster.rules.get()) {
            (false, Some(log)) => {
                let (e, content) = (engine.clone(), req.content.clone());
                let shop = blocking("Push", move || {
                    let compiled = e.rules.compile(&content).map_err(|e| {
                        metrics::rule_push(Origin::Push, PushResult::Rejected);
                        store_status(e)
                    })?;
                    crate::zones::check(&e.index, &compiled).map_err(|e| {
                        metrics::rule_push(Origin::Push, PushResult::Failed);
                        store_status(e)
                    })?;
                    Ok(compiled.shop.to_string())
                })
                .await?;
                self.check_served(&shop)?;
                let record = RuleRecord {
                    v: cluster::rules::VERSION,
                    op: Op::Push { content: req.content },
                    shop,
                    expected: req.expected_revision,
                    if_absent: false,
                    origin: Origin::Push.as_str().to_string(),
                    at_ms: now_ms,
                };
                through_log(log, &record, Origin::Push).await?
            }
            _ => {
                blocking("Push", move || {
                    let zone_check = |rules: &vitrine_core::RuleSet| crate::zones::check(&engine.index, rules);
                    engine
                        .rules
                        .push_checked(
                            &req.content,
                            Origin::Push,
                            req.dry_run,
                            now_ms,
                            req.expected_revision,
                            &zone_check,
                        )
                        .map_err(|e| {
                            let result = if matches!(e, StoreError::Invalid(_)) {
                                PushResult::Rejected
                            } else {
                                PushResult::Failed
                            };
                            metrics::rule_push(Origin::Push, result);
                            store_status(e)
                        })
                })
                .await?
            }
        };
        let shop = served.rules.shop.to_string();
        if req.dry_run {
            metrics::rule_push(Origin::Push, PushResult::DryRun);
        } else {
            metrics::rule_push(Origin::Push, PushResult::Accepted);
            metrics::rule_revision(&shop, served.revision);
            tracing::info!(shop, revision = served.revision, "rule set pushed");
        }
        let engine = self.engine.clone();
        let dry_run = req.dry_run;
        blocking("Push", move || {
            let index = engine.index.shop(&shop);
            let audiences = audience_sizes(&served.rules, index.as_deref(), &*engine.ledger, now_ms)
                .into_iter()
                .map(|(name, size)| pb::AudienceSize {
                    name,
                    size: size.unwrap_or(0),
                    sizable: size.is_some(),
                })
                .collect();
            Ok(Response::new(pb::PushResponse {
                shop,
                revision: served.revision,
                audiences,
                dry_run,
            }))
        })
        .await
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.get_ref();
        let shop = required("shop", &req.shop)?;
        self.check_served(shop)?;
        let (revision, serving) = self.engine.rules.get(shop, req.revision).map_err(store_status)?;
        Ok(Response::new(pb::GetResponse {
            shop: shop.to_string(),
            revision: revision.revision,
            content: revision.content.to_string(),
            serving,
        }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let req = request.get_ref();
        let shop = required("shop", &req.shop)?;
        self.check_served(shop)?;
        let (revisions, serving) = self.engine.rules.list(shop).map_err(store_status)?;
        Ok(Response::new(pb::ListResponse {
            shop: shop.to_string(),
            revisions: revisions
                .iter()
                .map(|r| pb::RevisionInfo {
                    revision: r.revision,
                    created_ms: r.created_ms,
                    origin: r.origin.as_str().to_string(),
                    serving: r.revision == serving,
                })
                .collect(),
        }))
    }

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Result<Response<pb::RollbackResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        required("shop", &req.shop)?;
        if req.revision == 0 {
            return Err(Status::invalid_argument(
                "`revision` is required: the revision to serve again",
            ));
        }
        let engine = self.engine.clone();
        let now_ms = at(0);
        let (e, shop, to) = (engine.clone(), req.shop.clone(), req.revision);
        blocking("Rollback", move || {
            rollback_zone_check(&e, &shop, to).map_err(|e| {
                metrics::rule_push(Origin::Rollback, PushResult::Failed);
                store_status(e)
            })
        })
        .await?;
        let revision = match engine.cluster.rules.get() {
            Some(log) => {
                self.check_served(&req.shop)?;
                // NOT_FOUND here, before anything is written.
                engine.rules.list(&req.shop).map_err(|e| {
                    metrics::rule_push(Origin::Rollback, PushResult::Failed);
                    store_status(e)
                })?;
                let record = RuleRecord {
                    v: cluster::rules::VERSION,
                    op: Op::Rollback { to: req.revision },
                    shop: req.shop.clone(),
                    expected: req.expected_revision,
                    if_absent: false,
                    origin: Origin::Rollback.as_str().to_string(),
                    at_ms: now_ms,
                };
                through_log(log, &record, Origin::Rollback).await?.revision
            }
            None => {
                let (shop, to, expected) = (req.shop.clone(), req.revision, req.expected_revision);
                blocking("Rollback", move || {
                    engine
                        .rules
                        .rollback_expecting(&shop, to, now_ms, expected)
                        .map_err(|e| {
                            metrics::rule_push(Origin::Rollback, PushResult::Failed);
                            store_status(e)
                        })
                })
                .await?
            }
        };
        metrics::rule_push(Origin::Rollback, PushResult::Accepted);
        metrics::rule_revision(&req.shop, revision);
        tracing::info!(
            shop = req.shop,
            revision,
            restored_from = req.revision,
            "rule set rolled back"
        );
        Ok(Response::new(pb::RollbackResponse {
            shop: req.shop,
            revision,
            restored_from: req.revision,
        }))
    }
}

/// Writes a rule change to the rules topic and maps what applying it
/// decided (or why there is no answer) to the call's result.
async fn through_log(
    log: &cluster::rules::RulesLog,
    record: &RuleRecord,
    origin: Origin,
) -> Result<Arc<crate::rules_store::Served>, Status> {
    let outcome = log.change(record).await.map_err(|e| {
        metrics::rule_push(origin, PushResult::Failed);
        Status::unavailable(format!("the rule change did not go through the rules topic: {e}"))
    })?;
    outcome.map(Applied::served).map_err(|refusal| {
        let result = if matches!(refusal, Refusal::Invalid(_)) {
            PushResult::Rejected
        } else {
            PushResult::Failed
        };
        metrics::rule_push(origin, result);
        match refusal {
            e @ Refusal::Mismatch { .. } => Status::aborted(e.to_string()),
            Refusal::NotFound(m) => Status::not_found(m),
            Refusal::Invalid(m) => invalid(m),
            Refusal::Failed(m) => {
                tracing::error!("rule store I/O failed: {m}");
                Status::internal(format!(
                    "the change is in the rules topic but could not be persisted here: {m}"
                ))
            }
        }
    })
}

#[tonic::async_trait]
impl pb::audiences_server::Audiences for Service {
    async fn size(&self, request: Request<pb::SizeRequest>) -> Result<Response<pb::SizeResponse>, Status> {
        let req = request.into_inner();
        let engine = self.engine.clone();
        blocking("Size", move || {
            let shop = required("shop", &req.shop)?;
            if req.expression.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "`expression` is required: an audience name or an expression",
                ));
            }
            let now_ms = instant(req.now_ms)?;
            let served = engine.rules.serving(shop);
            let index = engine.index.shop(shop);
            if served.is_none() && index.is_none() {
                return Err(missing_shop(&engine, shop));
            }
            let size = size_of_with(
                served.as_deref().map(|s| &s.rules),
                index.as_deref(),
                &*engine.ledger,
                &req.expression,
                now_ms,
                &engine.rules.limits().expression(),
            )
            .map_err(|e: SizeError| invalid(format!("expression {e}")))?;
            Ok(Response::new(pb::SizeResponse {
                size,
                known_visitors: index.map_or(0, |i| u64::from(i.visitor_count())),
                rule_revision: served.map_or(0, |s| s.revision),
            }))
        })
        .await
    }
}

/// A wire event as event fields: empty strings are absent (proto3).
fn fields(e: pb::Event) -> Fields<'static> {
    let text = |s: String| (!s.is_empty()).then_some(Cow::Owned(s));
    Fields {
        shop: text(e.shop),
        visitor: text(e.visitor),
        action: text(e.action),
        item: text(e.item),
        category: text(e.category),
        price: e.price,
        quantity: e.quantity,
        tag: text(e.tag),
        tier: e.tier,
        ts: e.ts,
        id: text(e.id),
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Service {
    async fn track(&self, request: Request<pb::TrackRequest>) -> Result<Response<pb::TrackResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        if req.events.len() > MAX_TRACK_EVENTS {
            return Err(Status::invalid_argument(format!(
                "{} events in one call; send at most {MAX_TRACK_EVENTS}",
                req.events.len()
            )));
        }
        let engine = self.engine.clone();
        let Some(log) = self.engine.cluster.track.get() else {
            return blocking("Track", move || {
                let (accepted, rejected) = engine.track(req.events.into_iter().map(fields)).map_err(|e| {
                    tracing::error!("{e}");
                    Status::unavailable(e.to_string())
                })?;
                Ok(track_response(accepted, rejected))
            })
            .await;
        };
        // Cluster: through the behavior topic, so every replica applies them.
        let (records, rejected) = blocking("Track", move || {
            let (valid, rejected) = engine.validate_batch(req.events.into_iter().map(fields));
            Ok((valid.iter().map(cluster::track::record).collect::<Vec<_>>(), rejected))
        })
        .await?;
        log.send(&records)
            .await
            .map_err(|e| Status::unavailable(format!("the events did not go through the behavior topic: {e}")))?;
        Ok(track_response(records.len() as u32, rejected))
    }
}

fn track_response(accepted: u32, rejected: Vec<crate::state::Rejected>) -> Response<pb::TrackResponse> {
    Response::new(pb::TrackResponse {
        accepted,
        rejected: rejected
            .into_iter()
            .map(|r| pb::RejectedEvent {
                index: r.index,
                reason: r.error.reason.as_str().to_string(),
                message: r.error.message,
            })
            .collect(),
    })
}

/// The lift window when a request names none.
pub const DEFAULT_LIFT_WINDOW: &str = "7d";

/// A lift request's `[from_ms, to_ms)`: each 0 (unbounded) or an instant, `from < to`.
fn lift_range(from_ms: i64, to_ms: i64) -> Result<(i64, i64), Status> {
    for (field, v) in [("from_ms", from_ms), ("to_ms", to_ms)] {
        if !(0..=MAX_TS).contains(&v) {
            return Err(Status::invalid_argument(format!(
                "`{field}` must be 0 (unbounded) or an instant up to {MAX_TS} (9999-12-31T23:59:59.999Z)"
            )));
        }
    }
    if from_ms != 0 && to_ms != 0 && from_ms >= to_ms {
        return Err(Status::invalid_argument(format!(
            "`from_ms` ({from_ms}) must be before `to_ms` ({to_ms})"
        )));
    }
    Ok((from_ms, to_ms))
}

#[tonic::async_trait]
impl pb::reports_server::Reports for Service {
    async fn lift(&self, request: Request<pb::LiftRequest>) -> Result<Response<pb::LiftResponse>, Status> {
        let req = request.into_inner();
        let engine = self.engine.clone();
        blocking("Lift", move || {
            let shop = required("shop", &req.shop)?;
            let id = bounded("id", &req.id)?;
            let window = match req.window.as_str() {
                "" => DEFAULT_LIFT_WINDOW,
                w => bounded("window", w)?,
            };
            let window = vitrine_core::time::Window::parse(window)
                .map_err(|e| Status::invalid_argument(format!("`window`: {e}")))?;
            let (from_ms, to_ms) = lift_range(req.from_ms, req.to_ms)?;
            let Some(served) = engine.rules.serving(shop) else {
                return Err(missing_shop(&engine, shop));
            };
            let index = engine.index.shop(shop);
            let query = vitrine_core::lift::LiftQuery {
                id: (!id.is_empty()).then_some(id),
                window,
                from_ms,
                to_ms,
            };
            let rows = vitrine_core::lift::lift(&served.rules, index.as_deref(), &query).map_err(|e| match e {
                vitrine_core::lift::LiftError::UnknownId(_) => Status::not_found(e.to_string()),
                _ => invalid(e.to_string()),
            })?;
            Ok(Response::new(pb::LiftResponse {
                shop: shop.to_string(),
                rule_revision: served.revision,
                rows: rows
                    .into_iter()
                    .map(|r| pb::LiftRow {
                        slot: slot_name(r.slot).to_string(),
                        id: r.id,
                        treated: r.treated,
                        control: r.control,
                        treated_converted: r.treated_converted,
                        control_converted: r.control_converted,
                        treated_rate: r.treated_rate,
                        control_rate: r.control_rate,
                        lift: r.lift,
                        ci_low: r.ci_low,
                        ci_high: r.ci_high,
                        treated_spend: r.treated_spend,
                        control_spend: r.control_spend,
                    })
                    .collect(),
            }))
        })
        .await
    }
}

/// What the studio needs of the services beyond their RPCs (`api::studio`).
impl Service {
    /// The engine the services answer from.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Whether admin calls need a bearer token (`--admin-token`).
    pub(crate) fn token_required(&self) -> bool {
        self.admin_token.is_some()
    }
}

/// The serving decision, and with `draft` the draft's, for one request as
/// Decide checks it, both explained and at the same instant (`now_ms` 0 is
/// the server clock, read once), against the shop's live index and claims
/// ledger. Nothing is logged or counted and no `decision_id` is taken: no
/// decision record, so no exposure, and no Decide metric (the studio's "try
/// a visitor" must not pollute the lift). The draft must be the shop's rule
/// file; its decision has revision 0. `serving` is `None` only for a shop
/// with no rules yet, tried with a draft.
pub fn decide_unlogged(
    engine: &Engine,
    req: &pb::DecideRequest,
    draft: Option<&vitrine_core::RuleSet>,
) -> Result<Tried, Status> {
    let shop = required("shop", &req.shop)?;
    let visitor = bounded("visitor", &req.visitor)?;
    let now_ms = instant(req.now_ms)?;
    if !engine.cluster.shops.serves(shop) {
        return Err(missing_shop(engine, shop));
    }
    if let Some(rules) = draft {
        if *rules.shop != *shop {
            return Err(invalid(format!(
                "the draft is the rule file of shop `{}`, not of `{shop}`",
                rules.shop
            )));
        }
        // As Push refuses it: the index counts hours in its own zone.
        crate::zones::check(&engine.index, rules).map_err(store_status)?;
    }
    let index = engine.index.shop(shop);
    let request = DecideRequest {
        visitor,
        context: context(req.context.as_ref()),
        item_limit: req.item_limit,
        explain: true,
        now_ms,
    };
    let decide = |rules: &vitrine_core::RuleSet, revision: u64| {
        let d = vitrine_core::decide(rules, index.as_deref(), &*engine.ledger, &request);
        decision_response(&d, revision)
    };
    let serving = engine
        .rules
        .with_serving(shop, |served| decide(&served.rules, served.revision));
    if serving.is_none() && draft.is_none() {
        return Err(missing_shop(engine, shop));
    }
    Ok(Tried {
        serving,
        draft: draft.map(|rules| decide(rules, 0)),
        now_ms,
    })
}

/// What [`decide_unlogged`] decided.
#[derive(Debug, Clone)]
pub struct Tried {
    /// By the serving rule set (`None`: the shop has none yet).
    pub serving: Option<pb::DecideResponse>,
    /// By the draft, when one was given.
    pub draft: Option<pb::DecideResponse>,
    /// The instant both were decided at (ms).
    pub now_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_len(message: &str) -> usize {
        message
            .chars()
            .map(|c| {
                if (' '..='~').contains(&c) && c != '%' {
                    1
                } else {
                    3 * c.len_utf8()
                }
            })
            .sum()
    }

    /// Regression (hardening #6): every rule error went into `grpc-message`;
    /// with ~400 errors the header list passed what clients accept and the
    /// project's own CLI failed with an HTTP/2 protocol error.
    #[test]
    fn status_messages_are_cut_at_a_line_to_what_a_header_can_carry() {
        let short = "1:1: one error".to_string();
        assert_eq!(bounded_message(short.clone()), short);

        let lines: Vec<String> = (0..400).map(|i| format!("{i}:7: undefined audience `a{i}`")).collect();
        let cut = bounded_message(lines.join("\n"));
        assert!(encoded_len(&cut) <= MAX_STATUS_MESSAGE_BYTES, "{}", encoded_len(&cut));
        let (kept, last) = cut.rsplit_once('\n').unwrap();
        assert!(
            last.starts_with("... message cut: ") && last.ends_with(" more bytes"),
            "{last}"
        );
        assert!(
            kept.lines().all(|l| lines.contains(&l.to_string())),
            "only whole lines are kept"
        );

        // Non-ASCII text takes three bytes a byte once encoded.
        let wide = "é".repeat(10_000);
        let cut = bounded_message(wide);
        assert!(encoded_len(&cut) <= MAX_STATUS_MESSAGE_BYTES);
        assert!(cut.starts_with('é'));
    }
}
