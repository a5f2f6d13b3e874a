//! The architecture's checkable invariants, checked.
//!
//! 1. Crate edges: ARCHITECTURE.md's "Crates" table says, for every workspace crate, which
//!    workspace crates it may depend on and which crates it must never reach, even through
//!    others (pigeon-core never links librdkafka, a database driver or a runtime). The test
//!    reads that table and `cargo metadata`'s resolved graph; a crate missing from the table
//!    fails too, so a new crate is documented before it lands.
//! 2. No module cycle inside any crate: the graph of each crate's top-level modules, drawn from
//!    `crate::…` and `super::…` paths outside test code, has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The host's graph only: other platforms' crates are never downloaded here.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let info = String::from_utf8_lossy(&rustc.stdout);
    let host = info.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc names its host").to_owned();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// One row of the "Crates" table.
#[derive(Debug)]
struct Rule {
    may_use: BTreeSet<String>,
    never_reaches: BTreeSet<String>,
}

/// The table between `<!-- crate-edges -->` and `<!-- /crate-edges -->` in ARCHITECTURE.md:
/// `| crate | may use | never reaches | … |`, names in backticks, `—` for none.
fn rules() -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text.find("<!-- crate-edges -->").expect("ARCHITECTURE.md has a <!-- crate-edges --> table");
    let end = text.find("<!-- /crate-edges -->").expect("and its <!-- /crate-edges --> end");
    let names =
        |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut rules = BTreeMap::new();
    for line in text[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, krate, may_use, never, ..] = cells.as_slice() else { continue };
        let Some(krate) = names(krate).into_iter().next() else { continue };
        rules.insert(
            krate,
            Rule {
                may_use: names(may_use).into_iter().collect(),
                never_reaches: names(never).into_iter().collect(),
            },
        );
    }
    assert!(!rules.is_empty(), "the crate-edges table has rows");
    rules
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let meta = metadata();
    let packages = meta["packages"].as_array().expect("packages");
    let name_of: BTreeMap<&str, &str> =
        packages.iter().filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?))).collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|id| name_of.get(id.as_str()?).copied())
        .collect();
    // Normal (linked) dependencies of every package, by name.
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let Some(name) = node["id"].as_str().and_then(|id| name_of.get(id)) else { continue };
        let linked = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null()));
        let entry = deps.entry(name).or_default();
        entry.extend(linked.filter_map(|d| d["pkg"].as_str().and_then(|id| name_of.get(id)).copied()));
    }
    let rules = rules();
    let mut problems = Vec::new();
    for member in &members {
        if *member == "pigeon-bench" {
            continue; // the benchmark harness: it may use anything, nothing uses it
        }
        let Some(rule) = rules.get(*member) else {
            problems.push(format!("{member} is not in ARCHITECTURE.md's crate-edges table"));
            continue;
        };
        for dep in deps.get(member).into_iter().flatten() {
            if members.contains(dep) && !rule.may_use.contains(*dep) {
                problems.push(format!("{member} depends on {dep}, which ARCHITECTURE.md does not allow"));
            }
        }
        // Everything it links, through any path.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(member, vec![member])];
        while let Some((at, path)) = stack.pop() {
            for dep in deps.get(at).into_iter().flatten() {
                if !seen.insert(*dep) {
                    continue;
                }
                let mut via = path.clone();
                via.push(dep);
                if rule.never_reaches.contains(*dep) {
                    problems.push(format!("{member} reaches {dep}: {}", via.join(" → ")));
                }
                stack.push((dep, via));
            }
        }
    }
    assert!(problems.is_empty(), "crate edges ARCHITECTURE.md forbids:\n  {}", problems.join("\n  "));
}

/// The top-level module a file belongs to, and its module path below the crate root.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The names a path continues with after `at`: one identifier, or each first segment inside
/// `{…}` (nested braces belong to deeper segments).
fn continuations(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    if let Some(inner) = text.strip_prefix('{') {
        let (mut depth, mut names, mut item_start) = (0usize, Vec::new(), 0usize);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(ident(inner[item_start..i].trim_start()));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(ident(inner[item_start..i].trim_start()));
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        names.into_iter().filter(|n| !n.is_empty()).collect()
    } else {
        vec![ident(text)]
    }
}

/// Edges from the file's top-level module to the top-level modules its paths name.
fn edges_of(src: &Path, file: &Path, code: &str, edges: &mut BTreeSet<(String, String)>) {
    let here = module_path(src, file);
    let Some(from) = here.first() else { return };
    for (i, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::`, `pigeon_core::…::crate` or the later segment of `super::super::`
        }
        let mut rest = &code[i..];
        let mut base: Vec<String> = if rest.starts_with("crate::") {
            rest = &rest["crate::".len()..];
            Vec::new()
        } else {
            let mut up = here.clone();
            while let Some(r) = rest.strip_prefix("super::") {
                up.pop();
                rest = r;
            }
            up
        };
        for name in continuations(rest) {
            if name == "self" || name == "super" {
                continue;
            }
            base.push(name);
            if let Some(to) = base.first() {
                if to != from {
                    edges.insert((from.clone(), to.clone()));
                }
            }
            base.pop();
        }
    }
}

/// The file's code without test code (from a line `#[cfg(test)]` on) or comments.
fn code_of(text: &str) -> String {
    let end = text.find("\n#[cfg(test)]").unwrap_or(text.len());
    text[..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// A cycle in `edges`, if any, as the modules along it.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // 0 unvisited, 1 on the stack, 2 done.
    fn visit<'a>(
        at: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(at, 1);
        stack.push(at);
        for to in next.get(at).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|m| m == to).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[from..].iter().map(|m| m.to_string()).collect();
                    cycle.push(to.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(to, next, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(at, 2);
        None
    }
    let mut state = BTreeMap::new();
    for start in next.keys() {
        if state.get(start).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(start, &next, &mut state, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_a_module_cycle() {
    let meta = metadata();
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().expect("members").iter().filter_map(Value::as_str).collect();
    let mut checked = 0;
    let mut cycles = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        if !package["id"].as_str().is_some_and(|id| members.contains(id)) {
            continue;
        }
        let name = package["name"].as_str().unwrap_or("?");
        let lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib")));
        let Some(src) = lib.and_then(|t| t["src_path"].as_str()).and_then(|p| Path::new(p).parent()) else {
            continue;
        };
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let mut edges = BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable source");
            edges_of(src, file, &code_of(&text), &mut edges);
        }
        checked += 1;
        if let Some(cycle) = find_cycle(&edges) {
            cycles.push(format!("{name}: {}", cycle.join(" → ")));
        }
    }
    assert!(checked >= 6, "crates checked: {checked}");
    assert!(cycles.is_empty(), "module cycles:\n  {}", cycles.join("\n  "));
}

#[test]
fn the_checker_sees_the_paths_rust_code_writes() {
    let src = Path::new("/x/src");
    let mut edges = BTreeSet::new();
    let code = "use crate::{a::B, b::{C, D}};\nuse super::c::E;\nlet x = crate::d::f();\n";
    edges_of(src, Path::new("/x/src/m/n.rs"), code, &mut edges);
    edges_of(src, Path::new("/x/src/top.rs"), "use super::m::Thing;", &mut edges);
    let got: Vec<String> = edges.iter().map(|(a, b)| format!("{a}→{b}")).collect();
    assert_eq!(got, ["m→a", "m→b", "m→d", "top→m"], "super::c from m/n.rs stays inside m");
    let cycle = find_cycle(
        &[("a", "b"), ("b", "c"), ("c", "a")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    );
    assert_eq!(cycle.map(|c| c.len()), Some(4), "a → b → c → a");
    assert!(find_cycle(&[("a".into(), "b".into())].into_iter().collect()).is_none());
}
