//! The `dicomgate` binary: parse the command line, load the configuration,
//! set up logging, run the library, map the result to an exit code
//! (README.md, "Exit codes").
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use dicomgate::cli::{exit, Cli, Command, RunArgs};
use dicomgate::{Config, Gateway, Metrics};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(&args),
        Command::Check(args) => check(&args),
        Command::Echo(args) => dicomgate::echo::echo_command(&args),
        Command::GenCert(args) => dicomgate::pki::gen_cert_command(&args),
    };
    ExitCode::from(code)
}

fn run(args: &RunArgs) -> u8 {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dicomgate: invalid configuration:\n{e}");
            return exit::CONFIG;
        }
    };
    dicomgate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let gateway = match Gateway::bind(config, Metrics::new()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("{e}");
                return exit::CONFIG;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return exit::FAILURE;
            }
        };
        match gateway.run(shutdown).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!("{e}");
                exit::FAILURE
            }
        }
    })
}

/// Completes on the first SIGTERM or SIGINT; a second one ends the process
/// at once (an admin who insists does not wait for the grace period).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = tokio::sync::oneshot::channel::<i32>();
    let seen = Arc::new(AtomicBool::new(false));
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut tx = Some(tx);
        for signal in signals.forever() {
            if seen.swap(true, Ordering::SeqCst) {
                eprintln!("dicomgate: second signal {signal}; exiting now");
                std::process::exit(i32::from(exit::FAILURE));
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(signal);
            }
        }
    })?;
    Ok(async move {
        if let Ok(signal) = rx.await {
            tracing::info!(signal, "shutdown requested");
        }
    })
}

fn check(args: &dicomgate::cli::CheckArgs) -> u8 {
    match Config::load(&args.config) {
        Ok(config) => {
            for (name, l) in &config.listeners {
                let security = match &l.security {
                    dicomgate::config::Security::Tls(_) => "Secured",
                    dicomgate::config::Security::Plaintext => "UNSECURED",
                };
                println!("{name}: {} {security}", l.listen);
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}
