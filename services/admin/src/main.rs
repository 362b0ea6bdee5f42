//! `pexper-admin`: see `pexper_admin::main`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pexper_admin::main()
}
