//! `completions SHELL` and `man [--dir DIR]`: generated from the clap definitions, so they
//! always list the subcommands and flags this binary has.

use std::path::Path;

use clap::CommandFactory;

use super::{OpError, OpResult, Report};
use crate::cli::{Cli, Shell};

const BIN: &str = "kernex-console";

/// The completion script for `shell`.
pub(crate) fn completions(shell: Shell) -> OpResult<Report> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    text(out)
}

/// `kernex-console.1` on stdout, or it and one page per subcommand
/// (`kernex-console-devices.1`, …) written to `dir`.
pub(crate) fn man(dir: Option<&Path>) -> OpResult<Report> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut out = Vec::new();
            render(cmd, BIN, &mut out)?;
            text(out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let mut written = Vec::new();
            write_pages(cmd, BIN, dir, &mut written)?;
            Ok(Report::text(
                written.iter().map(|p| format!("{p}\n")).collect::<String>(),
            ))
        }
    }
}

/// One page for `cmd`, then one for each of its subcommands, recursively.
fn write_pages(
    cmd: clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> OpResult<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(sub.clone(), &sub_name, dir, written)?;
    }
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    render(cmd, name, &mut page)?;
    std::fs::write(&path, page)
        .map_err(|e| OpError::Failed(format!("cannot write {}: {e}", path.display())))?;
    written.push(path.display().to_string());
    Ok(())
}

fn render(cmd: clap::Command, title: &str, out: &mut Vec<u8>) -> OpResult<()> {
    clap_mangen::Man::new(cmd)
        .title(title.to_owned())
        .render(out)
        .map_err(|e| OpError::Failed(format!("cannot render the man page: {e}")))
}

fn text(bytes: Vec<u8>) -> OpResult<Report> {
    String::from_utf8(bytes)
        .map(Report::text)
        .map_err(|e| OpError::Failed(format!("generated text is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cli::Format;

    fn out(r: OpResult<Report>) -> String {
        r.unwrap().render(Format::Text).unwrap().unwrap()
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = out(completions(shell));
            for sub in ["devices", "deploy", "login", "completions", "man"] {
                assert!(script.contains(sub), "{shell:?} lacks {sub}");
            }
        }
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let page = out(man(None));
        assert!(page.contains(".TH kernex-console"), "{page}");
        assert!(page.contains("devices") && page.contains("login"));

        let dir = tempfile::tempdir().unwrap();
        let listed = out(man(Some(dir.path())));
        for name in [
            "kernex-console",
            "kernex-console-devices",
            "kernex-console-config-get",
        ] {
            let path = dir.path().join(format!("{name}.1"));
            assert!(listed.contains(&path.display().to_string()), "{listed}");
            assert!(!std::fs::read(&path).unwrap().is_empty());
        }
    }
}
