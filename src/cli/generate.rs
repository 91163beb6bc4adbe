//! What is generated from the program's own definitions, so it cannot drift from them: the
//! manifest's JSON Schema (from the loader's types), shell completions and man pages (from
//! the clap definitions).

use std::path::Path;

use clap::CommandFactory;

use super::{Cli, EXIT_ERROR, EXIT_OK};

/// `listwarden schema`: the JSON Schema of a ListPolicy on stdout.
pub fn schema() -> u8 {
    super::print_json(&listwarden::manifest::json_schema());
    EXIT_OK
}

/// `listwarden completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "listwarden", &mut std::io::stdout());
    EXIT_OK
}

/// `listwarden man DIR`: `listwarden.1` and `listwarden-COMMAND.1` for each command.
pub fn man(dir: &Path) -> u8 {
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => {
            println!(
                "man pages written to {}; `man -M <its parent> listwarden` reads them, or \
                 copy them into a man1 directory on MANPATH",
                dir.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the man pages into {}: {e}; give a directory you can write",
                dir.display()
            );
            EXIT_ERROR
        }
    }
}
