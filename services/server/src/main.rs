//! `pexper-server`: see `pexper_server::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pexper_server::cli::main()
}
