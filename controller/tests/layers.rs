//! The controller's layering, checked from its source: the top-level modules of
//! `controller/src` (model, store, service, api, convert, ...) import each other
//! without cycles, `model` imports only std and external crates, `convert` only `model`,
//! and `store` imports neither `api` nor `service`. See the module map in docs/ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Modules that may import only std and external crates.
const PURE: &[&str] = &["model"];
/// `convert` only maps types: it may import the model and nothing else of the crate.
const CONVERT_MAY_IMPORT: &[&str] = &["model"];
/// What the store must not import (it is below the services and the RPC layer).
const ABOVE_STORE: &[&str] = &["api", "service"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file relative to `src` (`service/vps.rs` -> [service, vps];
/// `service/mod.rs` -> [service]; `lib.rs` -> []).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// Source without comments (`//` to the end of the line; doc comments included),
/// so a path named in prose is not an import.
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of every crate-relative path in `source`: `use crate::a::X`,
/// `use crate::{a::X, b::{Y, Z}}`, inline `crate::c::f()`, and `super::` paths that
/// climb to the crate root from a file at `module` (a module path as [`module_path`]).
fn imported_roots(source: &str, module: &[String]) -> BTreeSet<String> {
    let source = strip_comments(source);
    let mut roots = BTreeSet::new();
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    // `crate::` followed by a name, or by a `{...}` group of paths.
    let mut rest = source.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue; // e.g. `paddock_crate::`
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // Top-level entries of the group: split at depth-0 commas.
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            roots.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(trimmed);
            if !name.is_empty() {
                roots.insert(name);
            }
        }
    }
    // `super::super::x` from a file `depth` levels deep reaches the root after `depth` supers.
    let depth = module.len();
    if depth > 0 {
        let climb = "super::".repeat(depth);
        let mut rest = source.as_str();
        while let Some(at) = rest.find(&climb) {
            rest = &rest[at + climb.len()..];
            if rest.starts_with("super::") {
                continue;
            }
            let name = ident(rest);
            if !name.is_empty() && name != "self" {
                roots.insert(name);
            }
        }
    }
    roots
}

/// The module graph of the crate at `src`, at top-level module granularity. The crate
/// root (lib.rs, main.rs) only wires modules together and is left out.
fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top_level: BTreeSet<String> = files
        .iter()
        .filter_map(|file| module_path(file.strip_prefix(src).ok()?).first().cloned())
        .collect();
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let module = module_path(relative);
        let Some(owner) = module.first().cloned() else {
            continue;
        };
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {file:?}: {e}"));
        let edges = graph.entry(owner.clone()).or_default();
        for root in imported_roots(&source, &module) {
            if root != owner && top_level.contains(&root) {
                edges.insert(root);
            }
        }
    }
    graph
}

/// A cycle in `graph` (its modules in order, the first repeated at the end), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, graph, &mut marks, &mut stack) {
            return Some(cycle);
        }
    }
    None
}

/// Every broken layering rule of `graph`, as sentences.
fn violations(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(cycle) = find_cycle(graph) {
        found.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    for pure in PURE {
        for imported in graph.get(*pure).into_iter().flatten() {
            found.push(format!(
                "{pure} imports crate::{imported} (it may import only std and external crates)"
            ));
        }
    }
    for imported in graph.get("convert").into_iter().flatten() {
        if !CONVERT_MAY_IMPORT.contains(&imported.as_str()) {
            found.push(format!(
                "convert imports crate::{imported} (it only maps types, to and from model)"
            ));
        }
    }
    for imported in graph.get("store").into_iter().flatten() {
        if ABOVE_STORE.contains(&imported.as_str()) {
            found.push(format!("store imports crate::{imported}, a layer above it"));
        }
    }
    found
}

fn synthetic(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .insert((*to).to_owned());
        graph.entry((*to).to_owned()).or_default();
    }
    graph
}

#[test]
fn the_controller_has_no_import_cycles_and_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    // The check must see the layers it guards, or it guards nothing.
    for module in ["model", "store", "service", "api", "convert"] {
        assert!(
            graph.contains_key(module),
            "no module {module} in {graph:?}"
        );
    }
    assert!(
        graph["api"].contains("service"),
        "the parser missed api's imports: {graph:?}"
    );
    let found = violations(&graph);
    assert!(found.is_empty(), "{}\ngraph: {graph:#?}", found.join("\n"));
}

#[test]
fn a_cycle_is_found() {
    let acyclic = synthetic(&[
        ("api", "service"),
        ("service", "store"),
        ("service", "model"),
        ("store", "model"),
        ("api", "model"),
    ]);
    assert_eq!(find_cycle(&acyclic), None);
    assert!(violations(&acyclic).is_empty());

    let cyclic = synthetic(&[
        ("api", "service"),
        ("service", "convert"),
        ("convert", "reconcile"),
        ("reconcile", "service"),
    ]);
    let cycle = find_cycle(&cyclic).expect("the cycle is found");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert!(violations(&cyclic)[0].starts_with("import cycle: "));

    assert_eq!(
        find_cycle(&synthetic(&[("a", "b"), ("b", "a")])),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
}

#[test]
fn model_and_store_rules_are_enforced() {
    let graph = synthetic(&[
        ("model", "store"),
        ("store", "service"),
        ("convert", "service"),
        ("convert", "model"),
    ]);
    let found = violations(&graph);
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("model imports crate::store")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("store imports crate::service")),
        "{found:?}"
    );
}

#[test]
fn imports_are_parsed_from_every_form() {
    let source = "\
//! Mentions crate::api in prose only.
use crate::model::{Quota, VpsRecord};
use crate::{
    error::ControllerError,
    store::{Store, StoreError},
    self,
};
use paddock_crate::nothing;
fn f() { let _ = crate::convert::vps_spec; } // crate::metrics in a comment
use super::super::auth::Principal;
";
    let roots = imported_roots(source, &["service".to_owned(), "vps".to_owned()]);
    let expected: BTreeSet<String> = ["model", "error", "store", "convert", "auth"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(roots, expected);
    // From a top-level file one `super::` reaches the root.
    let roots = imported_roots("use super::store::Store;", &["auth".to_owned()]);
    assert!(roots.contains("store"), "{roots:?}");
}
