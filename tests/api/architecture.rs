//! The layout's rules, checked on the source: no module of a service crate depends, through
//! others, on itself (`store` imports no job, a job module does not call back into a module
//! that imports it). A cycle is what the next service would copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of a crate and the top-level modules it names through `crate::`.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`store.rs`, `crash/mod.rs`, `crash/scrub.rs`), or
/// `None` for the crate root and binaries.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let path = regex::Regex::new(r"crate::(?:\{([^}]*)\}|([a-z_][a-z0-9_]*))").unwrap();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for found in path.captures_iter(&text) {
            let names: Vec<&str> = match (found.get(1), found.get(2)) {
                (Some(group), _) => group.as_str().split(',').collect(),
                (None, Some(one)) => vec![one.as_str()],
                _ => continue,
            };
            for name in names {
                let head = name.trim().split("::").next().unwrap_or("").trim();
                if head != from && modules.contains(head) {
                    edges.insert(head.to_owned());
                }
            }
        }
    }
    graph
}

/// One cycle of the graph, if it has any (a depth-first search for a back edge).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services");
    let mut crates = 0;
    let mut cycles = Vec::new();
    for entry in std::fs::read_dir(&services).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        if let Some(cycle) = find_cycle(&module_graph(&src)) {
            cycles.push(format!("{}: {}", src.display(), cycle.join(" → ")));
        }
    }
    assert!(crates >= 8, "found the service crates ({crates})");
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: Graph = [
        ("store", vec!["request"]),
        ("emails", vec!["store", "unsubscribe"]),
        ("unsubscribe", vec!["emails"]),
        ("request", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["emails".into(), "unsubscribe".into(), "emails".into()])
    );
}
