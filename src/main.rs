//! The `dicomgate` binary: parse the command line, load the configuration,
//! set up logging, run the library, map the result to an exit code
//! (docs/operations.md, "Command line and exit codes").
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dicomgate::cli::{exit, Cli, Command, RunArgs};
use dicomgate::{Config, Gateway, Metrics};
use tokio::sync::mpsc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(&args),
        Command::Check(args) => dicomgate::check::check_command(&args),
        Command::Echo(args) => dicomgate::echo::echo_command(&args),
        Command::GenCert(args) => dicomgate::pki::gen_cert_command(&args),
        Command::Schema => {
            print!("{}", dicomgate::config::schema::json_schema_text());
            exit::OK
        }
        Command::GenerateAssets(args) => match generate_assets(&args.out) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("dicomgate: cannot write assets into {}: {e}", args.out.display());
                exit::FAILURE
            }
        },
    };
    ExitCode::from(code)
}

/// Man pages (dicomgate(1), one dicomgate-COMMAND(1) per subcommand as git
/// does, dicomgate.yaml(5)), shell completions and the JSON Schema, for the
/// package. Generated from the binary's own clap and serde definitions, so
/// they describe exactly the binary they ship with.
fn generate_assets(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;

    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cli = Cli::command();
    cli.build();
    std::fs::write(man.join("dicomgate.1"), main_man_page()?)?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("dicomgate-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut page)?;
        std::fs::write(man.join(format!("{name}.1")), page)?;
    }
    std::fs::write(man.join("dicomgate.yaml.5"), dicomgate::config::schema::man_page(env!("CARGO_PKG_VERSION")))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "dicomgate", &completions)?;
    }
    std::fs::write(out.join("dicomgate.schema.json"), dicomgate::config::schema::json_schema_text())?;
    Ok(())
}

/// dicomgate(1): the command, then every subcommand's synopsis and options
/// (so one page answers "what can it do"), exit status and files. The
/// per-command pages carry the same options again, as git's do.
fn main_man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;

    // `help` is clap's, not ours: keep it out of the page.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_man = clap_mangen::Man::new(sub.clone().name(format!("dicomgate {}", sub.get_name())));
        let mut section = Vec::new();
        sub_man.render_synopsis_section(&mut section)?;
        sub_man.render_description_section(&mut section)?;
        sub_man.render_options_section(&mut section)?;
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        page.extend_from_slice(format!(".SH \"DICOMGATE {}\"\n", sub.get_name().to_uppercase()).as_bytes());
        page.extend_from_slice(section.as_bytes());
    }
    page.extend_from_slice(
        concat!(
            ".SH \"EXIT STATUS\"\n",
            ".TP\n0\nsuccess (run: stopped cleanly after SIGTERM/SIGINT)\n",
            ".TP\n1\nthe operation failed (echo refused, backend unreachable, runtime error, second stop signal)\n",
            ".TP\n2\ncommand\\-line usage error\n",
            ".TP\n3 to 8\necho: rejected, aborted, TLS, timeout, unreachable, C\\-ECHO failed (check: 3 is valid with warnings)\n",
            ".TP\n64\nthe configuration, or a certificate or key it names, is invalid, or an address cannot be bound\n",
            ".SH SIGNALS\n",
            "SIGHUP reloads the configuration and certificates (live associations keep running); ",
            "SIGTERM and SIGINT drain for shutdown.grace_period, then abort the rest and exit 0.\n",
            ".SH FILES\n.TP\n/etc/dicomgate/config.yaml\nthe configuration, see \\fBdicomgate.yaml\\fR(5)\n",
            ".TP\n/var/lib/dicomgate\ngenerated certificates and keys\n",
            ".SH \"SEE ALSO\"\n\\fBdicomgate.yaml\\fR(5), /usr/share/doc/dicomgate/operations.md\n",
        )
        .as_bytes(),
    );
    man.render_version_section(&mut page)?;
    Ok(page)
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
        // Before binding: a SIGHUP's default action would kill the process.
        let (shutdown, reload) = match signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return exit::FAILURE;
            }
        };
        let gateway = match Gateway::bind(config, Metrics::new()).await {
            Ok(g) => g,
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
fn signals() -> std::io::Result<(impl std::future::Future<Output = ()> + Send + 'static, mpsc::Receiver<()>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<i32>();
    let (reload_tx, reload_rx) = mpsc::channel(1);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut stop_tx = Some(stop_tx);
        for signal in signals.forever() {
            if signal == SIGHUP {
                // Full means a reload is already pending: it will read the
                // file as it is now.
                let _ = reload_tx.try_send(());
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
    Ok((stop, reload_rx))
}
