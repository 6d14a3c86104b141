//! The `dicomgate` binary: parse the command line, load the configuration,
//! set up logging, run the library, map the result to an exit code
//! (docs/operations.md, "Command line and exit codes").
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dicomgate::cli::{Cli, Command, RunArgs};
use dicomgate::exit;
use dicomgate::lifecycle::sockets::{Inherited, Source};
use dicomgate::lifecycle::upgrade::Relauncher;
use dicomgate::{Config, Gateway, Metrics};
use tokio::sync::mpsc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(&args),
        Command::Check(args) => dicomgate::check::check_command(&args.config, args.echo),
        Command::Echo(args) => dicomgate::echo::echo_command(&args.into()),
        Command::GenCert(args) => dicomgate::pki::gen_cert_command(&args.into()),
        Command::Schema => {
            print!("{}", dicomgate::config::schema::json_schema_text());
            exit::OK
        }
        Command::GenerateAssets(args) => match dicomgate::cli::assets::generate(&args.out) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("dicomgate: cannot write assets into {}: {e}", args.out.display());
                exit::FAILURE
            }
        },
    };
    ExitCode::from(code)
}

fn run(args: &RunArgs) -> u8 {
    // First, while we have one thread: this takes passed sockets and clears
    // the LISTEN_* variables. The path is recorded before a package upgrade
    // can replace the file.
    let inherited = Inherited::from_env();
    let relauncher = Relauncher::from_startup();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dicomgate: invalid configuration:\n{e}");
            return exit::CONFIG;
        }
    };
    dicomgate::logging::init(&config.log);
    let inherited = match inherited {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    if let Some(why) = &inherited.ignored {
        tracing::warn!("passed sockets not taken: {why}; binding every listener");
    }
    match inherited.source {
        Some(Source::Systemd) => {
            tracing::info!(sockets = inherited.len(), "socket activation: sockets passed by systemd")
        }
        Some(Source::Upgrade { parent }) => {
            tracing::info!(parent, sockets = inherited.len(), "upgrade: taking over the previous process's sockets")
        }
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        // Before binding: a SIGHUP's default action would kill the process.
        let (shutdown, reload, upgrade) = match signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return exit::FAILURE;
            }
        };
        let gateway = match Gateway::bind_with(config, Metrics::new(), inherited).await {
            Ok(g) => g.with_upgrade(upgrade, relauncher),
            Err(e) => {
                tracing::error!("{e}");
                return exit::CONFIG;
            }
        };
        match gateway.run_with_reload(shutdown, reload).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!("{e}");
                exit::FAILURE
            }
        }
    })
}

/// SIGTERM/SIGINT: the returned future completes (graceful drain); a second
/// one ends the process at once, for an admin who will not wait for the grace
/// period. SIGHUP: a reload request (several pending ones coalesce).
/// SIGUSR2: a hitless upgrade request (one at a time).
#[allow(clippy::type_complexity)]
fn signals(
) -> std::io::Result<(impl std::future::Future<Output = ()> + Send + 'static, mpsc::Receiver<()>, mpsc::Receiver<()>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<i32>();
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (upgrade_tx, upgrade_rx) = mpsc::channel(1);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut stop_tx = Some(stop_tx);
        for signal in signals.forever() {
            if signal == SIGHUP {
                // Full means a reload is already pending: it will read the
                // file as it is now.
                let _ = reload_tx.try_send(());
                continue;
            }
            if signal == SIGUSR2 {
                if upgrade_tx.try_send(()).is_err() {
                    tracing::warn!("an upgrade is already in progress; SIGUSR2 ignored");
                }
                continue;
            }
            match stop_tx.take() {
                Some(tx) => {
                    let _ = tx.send(signal);
                }
                None => {
                    eprintln!("dicomgate: second stop signal ({signal}); exiting now without draining");
                    std::process::exit(i32::from(exit::FAILURE));
                }
            }
        }
    })?;
    let stop = async move {
        if let Ok(signal) = stop_rx.await {
            tracing::info!(signal, "shutdown requested");
        }
    };
    Ok((stop, reload_rx, upgrade_rx))
}
