//! `pexper-admin`, built for the tests.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pexper_admin::main()
}
