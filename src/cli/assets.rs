//! The package's generated assets: man pages (dicomgate(1), one
//! dicomgate-COMMAND(1) per subcommand as git does, dicomgate.yaml(5)), shell
//! completions and the JSON Schema. `dicomgate generate-assets --out DIR`
//! (hidden; scripts/build-package.sh runs it) writes them from the binary's
//! own clap and serde definitions, so they describe exactly the binary they
//! ship with.

use super::Cli;

/// Man pages (dicomgate(1), one dicomgate-COMMAND(1) per subcommand as git
/// does, dicomgate.yaml(5)), shell completions and the JSON Schema, for the
/// package. Generated from the binary's own clap and serde definitions, so
/// they describe exactly the binary they ship with.
pub fn generate(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;

    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cli = Cli::command();
    cli.build();
    std::fs::write(man.join("dicomgate.1"), main_page()?)?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("dicomgate-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut page)?;
        std::fs::write(man.join(format!("{name}.1")), page)?;
    }
    std::fs::write(man.join("dicomgate.yaml.5"), crate::config::schema::man_page(env!("CARGO_PKG_VERSION")))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "dicomgate", &completions)?;
    }
    std::fs::write(out.join("dicomgate.schema.json"), crate::config::schema::json_schema_text())?;
    Ok(())
}

/// dicomgate(1): the command, then every subcommand's synopsis and options
/// (so one page answers "what can it do"), exit status and files. The
/// per-command pages carry the same options again, as git's do.
fn main_page() -> std::io::Result<Vec<u8>> {
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
