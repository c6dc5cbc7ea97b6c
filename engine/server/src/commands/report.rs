//! `vitrine report lift`: asks a running server's Reports/Lift and prints
//! one block per entry (or one JSON object per line with `--json`).

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use tonic::Code;
use vitrine_proto::v1 as pb;

use crate::cli::LiftArgs;
use crate::commands::health;

/// Runs the report; exit 0 with it, 1 when the server refuses the request,
/// 2 when it cannot be asked.
pub async fn lift(args: &LiftArgs, out: &mut impl Write) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("vitrine report lift: {message}");
        ExitCode::from(code)
    };
    let (from_ms, to_ms) = match (
        instant("--from", args.from.as_deref()),
        instant("--to", args.to.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(2, e),
    };
    let tls = match health::client_tls_config(
        &args.addr,
        args.tls_ca.as_deref(),
        args.tls_name.as_deref(),
        args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
    ) {
        Ok(tls) => tls,
        Err(e) => return fail(2, e),
    };
    let mut client = match health::channel(&args.addr, tls).await {
        Ok(channel) => pb::reports_client::ReportsClient::new(channel),
        Err(e) => return fail(2, format!("cannot connect to {}: {e}", args.addr)),
    };
    let request = pb::LiftRequest {
        shop: args.shop.clone(),
        id: args.id.clone().unwrap_or_default(),
        window: args.window.clone(),
        from_ms,
        to_ms,
    };
    match client.lift(request).await {
        Ok(response) => {
            let text = render(&response.into_inner(), &args.window, args.json);
            match out.write_all(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(2, format!("cannot write the report: {e}")),
            }
        }
        Err(s)
            if matches!(
                s.code(),
                Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
            ) =>
        {
            fail(1, format!("{:?}: {}", s.code(), s.message()))
        }
        Err(s) => fail(2, format!("{:?}: {}", s.code(), s.message())),
    }
}

/// `--from`/`--to`: absent = 0 (unbounded), else RFC 3339 or ms since the epoch.
fn instant(flag: &str, value: Option<&str>) -> Result<i64, String> {
    let Some(text) = value else { return Ok(0) };
    text.parse::<i64>()
        .ok()
        .or_else(|| vitrine_core::time::parse_rfc3339(text))
        .ok_or_else(|| format!("{flag} `{text}` is neither an RFC 3339 instant nor milliseconds since the epoch"))
}

/// The report as text: a heading, then one block per entry.
pub fn render(r: &pb::LiftResponse, window: &str, json: bool) -> String {
    let mut s = String::new();
    if json {
        for row in &r.rows {
            let line = serde_json::json!({
                "shop": r.shop, "rule_revision": r.rule_revision, "slot": row.slot, "id": row.id,
                "treated": row.treated, "control": row.control,
                "treated_converted": row.treated_converted, "control_converted": row.control_converted,
                "treated_rate": row.treated_rate, "control_rate": row.control_rate,
                "lift": row.lift, "ci_low": row.ci_low, "ci_high": row.ci_high,
                "treated_spend": row.treated_spend, "control_spend": row.control_spend,
            });
            let _ = writeln!(s, "{line}");
        }
        return s;
    }
    let _ = writeln!(
        s,
        "shop {} (rule revision {}), conversions within {window} of a visitor's first exposure",
        r.shop, r.rule_revision
    );
    if r.rows.is_empty() {
        let _ = writeln!(s, "no entry of the rule file has a holdout: nothing to compare");
    }
    let width = r
        .rows
        .iter()
        .map(|row| row.treated.max(row.control).to_string().len())
        .max()
        .unwrap_or(1);
    for row in &r.rows {
        let _ = writeln!(s, "\n{} {}", row.slot, row.id);
        for (group, n, converted, rate, spend) in [
            (
                "treated",
                row.treated,
                row.treated_converted,
                row.treated_rate,
                row.treated_spend,
            ),
            (
                "control",
                row.control,
                row.control_converted,
                row.control_rate,
                row.control_spend,
            ),
        ] {
            let _ = writeln!(
                s,
                "  {group}  {n:>width$} visitors, {converted:>width$} converted ({:.2}%), spend per visitor {spend:.2}",
                rate * 100.0
            );
        }
        let _ = writeln!(
            s,
            "  lift     {:+.2} points, 95% interval [{:+.2}, {:+.2}]{}",
            row.lift * 100.0,
            row.ci_low * 100.0,
            row.ci_high * 100.0,
            verdict(row)
        );
    }
    s
}

/// A plain reading of the interval.
fn verdict(row: &pb::LiftRow) -> &'static str {
    if row.treated == 0 || row.control == 0 {
        " (no comparison yet: a group is empty)"
    } else if row.ci_low > 0.0 {
        " (it works)"
    } else if row.ci_high < 0.0 {
        " (it hurts)"
    } else {
        " (not distinguishable from no effect yet)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: &str, id: &str, treated: u64, control: u64, lift: f64, ci: (f64, f64)) -> pb::LiftRow {
        pb::LiftRow {
            slot: slot.into(),
            id: id.into(),
            treated,
            control,
            treated_converted: treated / 8,
            control_converted: control / 12,
            treated_rate: 0.125,
            control_rate: 0.0833,
            lift,
            ci_low: ci.0,
            ci_high: ci.1,
            treated_spend: 14.2,
            control_spend: 9.8,
        }
    }

    #[test]
    fn a_report_reads_as_blocks_with_a_verdict() {
        let r = pb::LiftResponse {
            shop: "demo".into(),
            rule_revision: 3,
            rows: vec![
                row("benefit", "points", 1800, 200, 0.0417, (0.002, 0.081)),
                row("banner", "hero", 40, 0, 0.0, (0.0, 0.0)),
            ],
        };
        let text = render(&r, "7d", false);
        assert_eq!(
            text,
            "shop demo (rule revision 3), conversions within 7d of a visitor's first exposure\n\
             \n\
             benefit points\n  \
             treated  1800 visitors,  225 converted (12.50%), spend per visitor 14.20\n  \
             control   200 visitors,   16 converted (8.33%), spend per visitor 9.80\n  \
             lift     +4.17 points, 95% interval [+0.20, +8.10] (it works)\n\
             \n\
             banner hero\n  \
             treated    40 visitors,    5 converted (12.50%), spend per visitor 14.20\n  \
             control     0 visitors,    0 converted (8.33%), spend per visitor 9.80\n  \
             lift     +0.00 points, 95% interval [+0.00, +0.00] (no comparison yet: a group is empty)\n"
        );
        let json = render(&r, "7d", true);
        assert_eq!(json.lines().count(), 2);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap_or("")).unwrap_or_default();
        assert_eq!(first["id"], "points");
        assert_eq!(first["treated"], 1800);
    }

    #[test]
    fn instants_are_rfc3339_or_milliseconds() {
        assert_eq!(instant("--from", None), Ok(0));
        assert_eq!(instant("--from", Some("1000")), Ok(1000));
        assert_eq!(instant("--to", Some("1970-01-01T00:00:01Z")), Ok(1000));
        assert!(instant("--to", Some("yesterday"))
            .unwrap_err()
            .contains("--to `yesterday`"));
    }
}
