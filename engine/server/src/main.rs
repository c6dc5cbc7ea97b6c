//! `vitrine`: the Vitrine binary. This file only wires the command line to
//! the subcommands.

use std::process::ExitCode;

use clap::Parser;
use vitrine::cli::{Cli, Command, KafkaCommand, LogFormat, ReportCommand, RulesCommand};
use vitrine::clock;
use vitrine::commands::{demo, health, produce, push, report, serve, validate};
use vitrine::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::from_args(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("vitrine serve: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.huge_pages {
                // Returns only when the process goes on as it is.
                let pages = vitrine::huge_pages::reexec();
                tracing::info!(%pages, "huge pages");
            }
            let workers = config
                .worker_threads
                .unwrap_or_else(vitrine::config::default_worker_threads);
            match runtime_with(Some(workers)).and_then(|rt| rt.block_on(run_server(config))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vitrine serve: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { rules_dir, visitors } => {
            match demo::run(&rules_dir, visitors, clock::now_ms(), &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("vitrine demo: {}: {e}", rules_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rules {
            command: RulesCommand::Validate { files },
        } => validate::run(&files, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Rules {
            command:
                RulesCommand::Push {
                    file,
                    addr,
                    admin_token,
                    dry_run,
                    expected_revision,
                    tls_ca,
                    tls_name,
                    tls_cert,
                    tls_key,
                },
        } => match (
            runtime(),
            health::client_tls_config(
                &addr,
                tls_ca.as_deref(),
                tls_name.as_deref(),
                tls_cert.as_deref().zip(tls_key.as_deref()),
            ),
        ) {
            (Ok(rt), Ok(tls)) => rt.block_on(push::run(
                &file,
                &addr,
                admin_token.as_deref(),
                dry_run,
                expected_revision,
                tls,
            )),
            (_, Err(e)) => {
                eprintln!("vitrine rules push: {e}");
                ExitCode::from(2)
            }
            (Err(e), _) => {
                eprintln!("vitrine rules push: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Health(args) => health::run(&args, &mut std::io::stdout()),
        Command::Report {
            command: ReportCommand::Lift(args),
        } => match runtime() {
            Ok(rt) => rt.block_on(report::lift(&args, &mut std::io::stdout())),
            Err(e) => {
                eprintln!("vitrine report lift: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Kafka {
            command:
                KafkaCommand::Produce {
                    brokers,
                    topic,
                    kafka_options,
                    encoding,
                    file,
                },
        } => match vitrine::kafka_options::collect(None, &kafka_options) {
            Ok(options) => produce::run(
                &brokers,
                &topic,
                &options,
                encoding,
                file.as_deref(),
                &mut std::io::stdout(),
            ),
            Err(problems) => {
                for p in problems {
                    eprintln!("vitrine kafka produce: {p}");
                }
                ExitCode::from(2)
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

fn runtime_with(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().build()?)
}

/// Log events to standard error, in `format`; `VITRINE_LOG` filters them
/// (default `info`). ANSI colour only when standard error is a terminal
/// (and `NO_COLOR` is unset), so a file or a pipe gets plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VITRINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        // One object per line: timestamp, level, target, message and the
        // event's own fields at the top level (no span context: Vitrine
        // logs no spans).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let rules_topic = config.kafka.as_ref().map(|k| k.rules_topic.clone());
    let studio = config.studio;
    let server = serve::start(config).await?;
    match rules_topic {
        // Cluster mode: the rules arrive from the topic after start.
        Some(topic) => println!(
            "\nVitrine (cluster mode) on {}; metrics on http://{}/metrics\nRules come from topic {topic} (seeded from --rules-dir); /readyz says 200 once the topics are read.\n",
            server.grpc_addr, server.metrics_addr
        ),
        None => println!(
            "{}",
            demo::hints(
                server.grpc_addr,
                server.metrics_addr,
                &server.engine.rules.shops(),
                studio
            )
        ),
    }
    server.run_until(shutdown_signal()).await
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
