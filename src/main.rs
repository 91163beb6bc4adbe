use std::process::ExitCode;

fn main() -> ExitCode {
    listwarden::cli::main()
}
