//! `kernex-server`: thin CLI over the library.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use kernex_server::settings::{
    Cli, Command, ServeArgs, TokenCommand, default_data_dir, redact_url,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("kernex-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    database_url: Some(url),
                    ..
                },
        }) => token_create_in_database(&name, &url),
        Some(Command::Token {
            command: TokenCommand::Create { name, data_dir, .. },
        }) => token_create(&name, data_dir.unwrap_or_else(default_data_dir)),
        Some(Command::Backup {
            to,
            data_dir,
            database_url: Some(url),
            blob_dir,
            blob_url,
        }) => {
            let blobs = cli_blobs(blob_url, &url, blob_dir, data_dir)?;
            let header = kernex_server::backup::backup_database(&url, &blobs, &to)
                .with_context(|| format!("backing up {}", redact_url(&url)))?;
            report_backup(&to, &header);
            Ok(())
        }
        Some(Command::Backup { to, data_dir, .. }) => {
            backup(&data_dir.unwrap_or_else(default_data_dir), &to)
        }
        Some(Command::Restore {
            from,
            data_dir,
            database_url: Some(url),
            blob_dir,
            blob_url,
        }) => {
            let blobs = cli_blobs(blob_url, &url, blob_dir, data_dir)?;
            let done = kernex_server::backup::restore_database(&from, &url, &blobs).with_context(
                || format!("restoring {} into {}", from.display(), redact_url(&url)),
            )?;
            report_restore(&from, &redact_url(&url), &done);
            Ok(())
        }
        Some(Command::Restore { from, data_dir, .. }) => {
            restore(&from, &data_dir.unwrap_or_else(default_data_dir))
        }
        Some(Command::Migrate { database_url }) => migrate(&database_url),
        Some(Command::Check {
            data_dir,
            database_url: Some(url),
            blob_dir,
            blob_url,
        }) => {
            let blobs = cli_blobs(blob_url, &url, blob_dir, data_dir)?;
            let report = kernex_server::backup::check_database(&url, &blobs)
                .with_context(|| format!("checking {}", redact_url(&url)))?;
            let hint = "Restore a backup into an empty database: kernex-server restore \
                        --from FILE --database-url URL";
            print_check(&redact_url(&url), &report, hint)
        }
        Some(Command::Check { data_dir, .. }) => check(&data_dir.unwrap_or_else(default_data_dir)),
        Some(Command::Serve(args)) => run(args),
        None => run(cli.serve),
    }
}

/// The blob store a `backup` / `restore` with `--database-url` reads or fills.
fn cli_blobs(
    blob_url: Option<String>,
    database_url: &str,
    blob_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<kernex_server::blobs::Blobs> {
    let local =
        blob_dir.unwrap_or_else(|| data_dir.unwrap_or_else(default_data_dir).join("bundles"));
    kernex_server::settings::blob_store(blob_url.as_deref(), Some(database_url), local)
        .map_err(anyhow::Error::msg)
}

fn migrate(url: &str) -> anyhow::Result<()> {
    let applied = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(kernex_server::store::PgStore::migrate(url))
        .with_context(|| format!("database {}", kernex_server::settings::redact_url(url)))?;
    println!("database schema up to date ({applied} migrations)");
    Ok(())
}

fn token_create_in_database(name: &str, url: &str) -> anyhow::Result<()> {
    use kernex_server::store::{PgOptions, PgStore, Store};
    if !kernex_server::routes::tokens::valid_token_name(name) {
        anyhow::bail!("--name must be 1-64 characters of [A-Za-z0-9._-]");
    }
    let token = kernex_server::auth::mint_token("kxo_");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = PgStore::connect(url, PgOptions::default()).await?;
            let made = store
                .create_operator_token(
                    name,
                    &kernex_server::auth::hash_token(&token),
                    chrono::Utc::now(),
                )
                .await;
            store.close().await;
            made
        })
        .with_context(|| format!("creating token {name:?} in {}", redact_url(url)))?;
    println!("{token}");
    Ok(())
}

fn token_create(name: &str, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    if !kernex_server::routes::tokens::valid_token_name(name) {
        anyhow::bail!("--name must be 1-64 characters of [A-Za-z0-9._-]");
    }
    let store = kernex_server::open_store(&data_dir, Default::default())?;
    let token = kernex_server::auth::mint_token("kxo_");
    store
        .create_operator_token_blocking(
            name,
            &kernex_server::auth::hash_token(&token),
            chrono::Utc::now(),
        )
        .with_context(|| format!("creating token {name:?}"))?;
    println!("{token}");
    Ok(())
}

fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<()> {
    let header = kernex_server::backup::backup_data_dir(data_dir, to)
        .with_context(|| format!("backing up {}", data_dir.display()))?;
    report_backup(to, &header);
    Ok(())
}

fn report_backup(to: &Path, header: &kernex_server::backup::Header) {
    let records: u64 = header.records.values().sum();
    println!(
        "wrote {}: {records} records, {} bundle files (format {} v{})",
        to.display(),
        header.bundle_files.len(),
        header.format,
        header.format_version
    );
    for id in &header.missing_bundle_files {
        eprintln!("warning: bundle {id} has a record but no file; it is not in the backup");
    }
}

fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let done = kernex_server::backup::restore_data_dir(from, data_dir)
        .with_context(|| format!("restoring {} into {}", from.display(), data_dir.display()))?;
    report_restore(from, &data_dir.display().to_string(), &done);
    Ok(())
}

fn report_restore(from: &Path, into: &str, done: &kernex_server::backup::Restored) {
    println!(
        "restored {} into {into}: {} records ({}), {} bundle files; written by kernex-server {} at {}",
        from.display(),
        done.records.total(),
        done.records,
        done.bundle_files,
        done.header.server_version,
        done.header.created_at.to_rfc3339()
    );
    for id in &done.header.missing_bundle_files {
        eprintln!(
            "warning: bundle {id} had no file when the backup was made; it cannot be downloaded"
        );
    }
}

/// Exit 0 when sound; 1 with the problems and the restore command.
fn check(data_dir: &Path) -> anyhow::Result<()> {
    let report = kernex_server::backup::check_data_dir(data_dir)
        .with_context(|| format!("checking {}", data_dir.display()))?;
    let hint = kernex_server::backup::restore_hint(data_dir);
    print_check(&data_dir.display().to_string(), &report, &hint)
}

/// Say what `check` found: "sound" (exit 0) or the problems and what to do (exit 1).
fn print_check(
    what: &str,
    report: &kernex_server::backup::CheckReport,
    hint: &str,
) -> anyhow::Result<()> {
    if report.sound() {
        println!(
            "{what}: sound; {} records ({}), {} bundle files verified",
            report.records.total(),
            report.records,
            report.bundle_files
        );
        return Ok(());
    }
    eprintln!("{what}: NOT sound:");
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    if report.unlisted > 0 {
        eprintln!("  … and {} more", report.unlisted);
    }
    eprintln!("{hint}");
    std::process::exit(1);
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log_level).context("--log-level")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = args.settings();
    tokio::runtime::Runtime::new()?.block_on(async move {
        let state = kernex_server::open(&settings)?;
        tracing::info!(data_dir = %settings.data_dir.display(), "store open");
        let std_listener = std::net::TcpListener::bind(args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = std_listener.local_addr()?;
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                tracing::info!(%addr, "listening (https)");
                kernex_server::serve_tls(state, std_listener, cert, key, shutdown_signal()).await?;
            }
            _ => {
                std_listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                tracing::info!(%addr, "listening (http)");
                kernex_server::serve(state, listener, shutdown_signal()).await?;
            }
        }
        tracing::info!("stopped cleanly");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
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
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
