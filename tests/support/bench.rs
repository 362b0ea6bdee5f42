//! What the benchmarks (`tests/benches/`) share: arguments, goals and a runtime.
//!
//! `cargo bench` runs a bench for real: full size, goals enforced. `cargo test` (and so CI)
//! runs every bench too, as a smoke run: a size that takes seconds, goals printed but not
//! enforced. A bench therefore never rots unbuilt or unrun; its figures come only from
//! `cargo bench`.

/// Whether this is a real benchmark run: `cargo bench` passes `--bench` to the target.
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The numeric arguments after `--` of a `cargo bench` run, each defaulting to `full`; in a
/// smoke run, `smoke`.
pub fn bench_args<const N: usize>(full: [u64; N], smoke: [u64; N]) -> [u64; N] {
    if !benchmarking() {
        println!("smoke run (goals not enforced): `cargo bench` measures");
        return smoke;
    }
    let given: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    std::array::from_fn(|i| given.get(i).copied().unwrap_or(full[i]))
}

/// Prints a benchmark's goal beside its figure and says whether it was met; the bench exits
/// non-zero (`bench_exit`) if any was missed.
pub fn goal(what: &str, figure: String, met: bool) -> bool {
    println!(
        "goal: {what}: {figure} — {}",
        if met { "met" } else { "MISSED" }
    );
    met
}

/// Ends a benchmark: exit code 1 when a goal was missed in a real run.
pub fn bench_exit(all_met: bool) -> ! {
    std::process::exit(if all_met || !benchmarking() { 0 } else { 1 })
}

/// Runs a benchmark on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A process's peak resident memory so far (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}
