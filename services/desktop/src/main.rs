#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pexper_desktop::cli::main()
}
