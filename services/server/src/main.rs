//! `pexper-server`: see `pexper_server::cli`.
#![forbid(unsafe_code)]

// A request allocates and frees many small buffers across the runtime's threads; glibc's
// allocator spent an eighth of the server's CPU on them under load (issue 17, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pexper_server::cli::main()
}
