//! The `listwarden` binary: parse the command line, call the library, map the outcome to an
//! exit code (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
