//! What the benchmarks (`tests/benches/`) share: arguments, goals and a runtime.

/// The numeric arguments after `--` of a `cargo bench` run, each defaulting to `defaults`.
pub fn bench_args<const N: usize>(defaults: [u64; N]) -> [u64; N] {
    let given: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    std::array::from_fn(|i| given.get(i).copied().unwrap_or(defaults[i]))
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

/// Ends a benchmark: exit code 1 when a goal was missed.
pub fn bench_exit(all_met: bool) -> ! {
    std::process::exit(if all_met { 0 } else { 1 })
}

/// Runs a benchmark on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}
