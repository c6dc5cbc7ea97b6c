//! `vitrine rules push FILE`: sends a rule file to a running server.

use std::path::Path;
use std::process::ExitCode;

use tonic::metadata::MetadataValue;
use tonic::Code;
use vitrine_proto::v1 as pb;

/// Pushes `file`; prints the new revision and audience sizes, or every error
/// as `FILE:line:column: message`. Exit 1 for a rejected file, 2 when the
/// push could not be made (unreadable file, server unreachable, refused).
pub async fn run(
    file: &Path,
    addr: &str,
    token: Option<&str>,
    dry_run: bool,
    expected_revision: u64,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> ExitCode {
    let name = file.display();
    let content = match crate::rules_store::read_rule_file(file, vitrine_core::rules::Limits::default().max_file_bytes)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = match crate::commands::health::channel(addr, tls).await {
        Ok(channel) => pb::rules_client::RulesClient::new(channel),
        Err(e) => {
            eprintln!("vitrine rules push: cannot connect to {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut request = tonic::Request::new(pb::PushRequest {
        content,
        dry_run,
        expected_revision,
    });
    if let Some(token) = token {
        match MetadataValue::try_from(format!("Bearer {token}")) {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => {
                eprintln!("vitrine rules push: the admin token is not a valid header value");
                return ExitCode::from(2);
            }
        }
    }
    match client.push(request).await {
        Ok(response) => {
            let r = response.into_inner();
            let verb = if r.dry_run { "would be" } else { "is now" };
            println!("{name}: shop {} {verb} serving revision {}", r.shop, r.revision);
            for a in &r.audiences {
                if a.sizable {
                    println!("  {:<24} {:>10} visitors", a.name, a.size);
                } else {
                    println!("  {:<24} {:>10} (reads the request context)", a.name, "-");
                }
            }
            ExitCode::SUCCESS
        }
        Err(status) if status.code() == Code::InvalidArgument => {
            for line in status.message().lines() {
                eprintln!("{name}:{line}");
            }
            ExitCode::FAILURE
        }
        Err(status) => {
            eprintln!("vitrine rules push: {:?}: {}", status.code(), status.message());
            ExitCode::from(2)
        }
    }
}
