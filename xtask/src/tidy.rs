//! Tidy: the architecture invariants of `docs/architecture.md`, checked on `cargo metadata` and
//! on the sources.
//!
//! Every check is a function from data (metadata JSON, file text, a directory) to a list of
//! violations, so the tests below can show that each one fails on doctored input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;

/// Crates that pool-core must never pull in, directly or through another crate.
const BANNED_UNDER_POOL_CORE: &[&str] =
    &["bollard", "kube", "kube-client", "kube-runtime", "hyper", "axum"];

/// Macros that mark unfinished or debugging code.
const FORBIDDEN_MACROS: &[&str] = &["todo", "unimplemented", "dbg"];

/// The facade package.
const FACADE: &str = "serverless-managers";

/// The README line that precedes the fenced block holding the test command.
const TEST_COMMAND_MARKER: &str = "<!-- test-command:";

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// pool-core pulls in a banned crate.
    PoolCoreDependency,
    /// A workspace member has no layer.
    UnknownMember,
    /// A crate depends on a crate its layer may not use.
    Layering,
    /// The facade depends on something that is not a workspace crate.
    FacadeDependency,
    /// A crate root does not open with `//!` docs.
    CrateDocs,
    /// `todo!`, `unimplemented!` or `dbg!` under crates/.
    ForbiddenMacro,
    /// The facade's sources contain something other than re-exports.
    FacadeSource,
    /// A facade feature is not documented in Cargo.toml or in the crate docs.
    FeatureDocs,
    /// `.ci/run` does not run exactly the README's test command.
    CiCommand,
    /// A crate with features is not documented with its defaults alone by CI's doc step.
    DocsAtDefaults,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) check: Check,
    pub(crate) message: String,
}

impl Violation {
    fn new(check: Check, message: impl Into<String>) -> Self {
        Self { check, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.check, self.message)
    }
}

/// `cargo xtask tidy`: runs every check and prints the violations.
pub(crate) fn run(root: &Path) -> ExitCode {
    match check_workspace(root) {
        Ok(violations) if violations.is_empty() => {
            println!("tidy: every architecture invariant holds");
            ExitCode::SUCCESS
        }
        Ok(violations) => {
            for violation in &violations {
                eprintln!("tidy: {violation}");
            }
            eprintln!("tidy: {} violation(s); see docs/architecture.md", violations.len());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tidy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every check on the workspace at `root`.
pub(crate) fn check_workspace(root: &Path) -> Result<Vec<Violation>, String> {
    let metadata = cargo_metadata(root)?;
    let workspace = Workspace::from_metadata(&metadata)?;
    let mut violations = workspace.dependency_violations();
    violations.extend(workspace.crate_doc_violations()?);
    violations.extend(forbidden_macro_violations(&root.join("crates"))?);

    let facade = workspace
        .package_by_name(FACADE)
        .ok_or_else(|| format!("the facade package `{FACADE}` is not in the workspace"))?;
    let facade_dir = facade.manifest_path.parent().unwrap_or(Path::new("."));
    violations.extend(facade_source_violations(&facade_dir.join("src"))?);
    violations.extend(feature_doc_violations(
        &read(&facade.manifest_path)?,
        &read(&facade_dir.join("src/lib.rs"))?,
        &facade.features,
    ));

    violations.extend(ci_command_violations(
        &read(&root.join("README.md"))?,
        &read(&root.join(".ci/run"))?,
    ));
    violations.extend(docs_at_defaults_violations(
        &workspace.members_with_features(),
        &crate::ci::documented_at_defaults(),
    ));
    Ok(violations)
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

fn cargo_metadata(root: &Path) -> Result<Value, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(root)
        .output()
        .map_err(|error| format!("could not run `cargo metadata`: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo metadata` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("`cargo metadata` printed invalid JSON: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Layers and dependencies

/// Where a workspace member sits (DESIGN.md §2, docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// pool-core, perf-monitor, cache-tiers.
    L0,
    /// resilience.
    L1,
    /// The backends.
    L2,
    /// gateway.
    L3,
    /// The facade: re-exports only.
    Facade,
    /// examples and benches: may use anything but xtask.
    Tooling,
    /// xtask: depends on no workspace crate.
    Xtask,
}

fn layer_of(package: &str) -> Option<Layer> {
    match package {
        "pool-core" | "perf-monitor" | "cache-tiers" => Some(Layer::L0),
        "resilience" => Some(Layer::L1),
        "backend-worker" | "backend-process" | "backend-docker" | "backend-k8s" => Some(Layer::L2),
        "gateway" => Some(Layer::L3),
        FACADE => Some(Layer::Facade),
        "examples" | "benches" => Some(Layer::Tooling),
        "xtask" => Some(Layer::Xtask),
        _ => None,
    }
}

/// Why `from` may not depend on `to`, or `None` when it may.
fn layering_rule(from: Layer, to: Layer) -> Option<&'static str> {
    use Layer::*;
    match (from, to) {
        (Xtask, _) => Some("xtask depends on no workspace crate: it must build before them"),
        (_, Xtask) => Some("nothing depends on xtask"),
        (Tooling, Tooling) => Some("examples and benches do not depend on each other"),
        (Tooling, _) => None,
        (_, Tooling) => Some("only the workspace's users may depend on examples or benches"),
        (_, Facade) => Some("crates of the workspace depend on each other, never on the facade"),
        (Facade, _) => None,
        (L0, L0) => Some("layer-0 crates do not depend on each other"),
        (L2, L2) => Some("backends never depend on each other"),
        (_, L3) => Some("only the facade, examples and benches may depend on gateway"),
        (from, to) if to >= from => {
            Some("a crate depends only on lower layers (L0 < L1 < L2 < L3)")
        }
        _ => None,
    }
}

/// The kind of a dependency edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepKind {
    Normal,
    Dev,
    Build,
}

/// A package of the resolved graph.
#[derive(Debug)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    /// `(kind, path)` of each lib, bin and proc-macro target.
    roots: Vec<(String, PathBuf)>,
    features: Vec<String>,
}

/// The resolved dependency graph of the workspace, from `cargo metadata`.
#[derive(Debug)]
struct Workspace {
    packages: BTreeMap<String, Package>,
    members: BTreeSet<String>,
    /// Package id → (dependency id, kinds of the edge).
    edges: BTreeMap<String, Vec<(String, Vec<DepKind>)>>,
}

fn field<'a>(value: &'a Value, key: &str, what: &str) -> Result<&'a Value, String> {
    value.get(key).ok_or_else(|| format!("cargo metadata: {what} has no `{key}`"))
}

fn string(value: &Value, key: &str, what: &str) -> Result<String, String> {
    field(value, key, what)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("cargo metadata: `{key}` of {what} is not a string"))
}

fn array<'a>(value: &'a Value, key: &str, what: &str) -> Result<&'a Vec<Value>, String> {
    field(value, key, what)?
        .as_array()
        .ok_or_else(|| format!("cargo metadata: `{key}` of {what} is not an array"))
}

impl Workspace {
    fn from_metadata(metadata: &Value) -> Result<Self, String> {
        let mut packages = BTreeMap::new();
        for package in array(metadata, "packages", "the metadata")? {
            let id = string(package, "id", "a package")?;
            let mut roots = Vec::new();
            for target in array(package, "targets", &id)? {
                for kind in array(target, "kind", &id)? {
                    let kind = kind.as_str().unwrap_or_default();
                    if matches!(kind, "lib" | "rlib" | "bin" | "proc-macro") {
                        roots.push((kind.to_owned(), string(target, "src_path", &id)?.into()));
                    }
                }
            }
            let features = field(package, "features", &id)?
                .as_object()
                .map(|features| features.keys().cloned().collect())
                .unwrap_or_default();
            packages.insert(
                id.clone(),
                Package {
                    name: string(package, "name", &id)?,
                    manifest_path: string(package, "manifest_path", &id)?.into(),
                    roots,
                    features,
                },
            );
        }
        let members = array(metadata, "workspace_members", "the metadata")?
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        let resolve = field(metadata, "resolve", "the metadata")?;
        let mut edges = BTreeMap::new();
        for node in array(resolve, "nodes", "the resolve graph")? {
            let id = string(node, "id", "a resolve node")?;
            let mut deps = Vec::new();
            for dep in array(node, "deps", &id)? {
                let to = string(dep, "pkg", &id)?;
                let kinds = array(dep, "dep_kinds", &id)?
                    .iter()
                    .map(|kind| match kind.get("kind").and_then(Value::as_str) {
                        Some("dev") => DepKind::Dev,
                        Some("build") => DepKind::Build,
                        _ => DepKind::Normal,
                    })
                    .collect();
                deps.push((to, kinds));
            }
            edges.insert(id, deps);
        }
        Ok(Self { packages, members, edges })
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.packages.get(id).map_or(id, |package| package.name.as_str())
    }

    fn package_by_name(&self, name: &str) -> Option<&Package> {
        self.members.iter().filter_map(|id| self.packages.get(id)).find(|p| p.name == name)
    }

    /// The names of the members that have features.
    fn members_with_features(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter_map(|id| self.packages.get(id))
            .filter(|package| !package.features.is_empty())
            .map(|package| package.name.as_str())
            .collect()
    }

    fn id_by_name(&self, name: &str) -> Option<&str> {
        self.members.iter().find(|id| self.name(id) == name).map(String::as_str)
    }

    fn deps_of(&self, id: &str) -> impl Iterator<Item = &(String, Vec<DepKind>)> {
        self.edges.get(id).into_iter().flatten()
    }

    /// Every dependency rule: pool-core's tree, known members, layering, the facade's deps.
    fn dependency_violations(&self) -> Vec<Violation> {
        let mut violations = self.pool_core_violations();
        for member in &self.members {
            let from = self.name(member);
            let Some(from_layer) = layer_of(from) else {
                violations.push(Violation::new(
                    Check::UnknownMember,
                    format!(
                        "workspace member `{from}` has no layer: give it one in xtask/src/tidy.rs \
                         and in docs/architecture.md"
                    ),
                ));
                continue;
            };
            for (dep, _) in self.deps_of(member) {
                let to = self.name(dep);
                if !self.members.contains(dep) {
                    if from_layer == Layer::Facade {
                        violations.push(Violation::new(
                            Check::FacadeDependency,
                            format!(
                                "the facade depends on `{to}`, which is not a workspace crate: \
                                 the facade only re-exports the workspace's crates"
                            ),
                        ));
                    }
                    continue;
                }
                let Some(to_layer) = layer_of(to) else { continue };
                if let Some(rule) = layering_rule(from_layer, to_layer) {
                    violations.push(Violation::new(
                        Check::Layering,
                        format!(
                            "`{from}` ({from_layer:?}) depends on `{to}` ({to_layer:?}): {rule}"
                        ),
                    ));
                }
            }
        }
        violations
    }

    /// pool-core's normal and build dependency tree holds no banned crate.
    fn pool_core_violations(&self) -> Vec<Violation> {
        let Some(root) = self.id_by_name("pool-core") else {
            return vec![Violation::new(Check::UnknownMember, "pool-core is not in the workspace")];
        };
        // Breadth-first, remembering how each package was reached to name the path.
        let mut reached_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([root]);
        let mut violations = Vec::new();
        while let Some(id) = queue.pop_front() {
            for (dep, kinds) in self.deps_of(id) {
                let shipped = kinds.iter().any(|kind| *kind != DepKind::Dev);
                if !shipped || dep == root || reached_from.contains_key(dep.as_str()) {
                    continue;
                }
                reached_from.insert(dep, id);
                queue.push_back(dep);
                if BANNED_UNDER_POOL_CORE.contains(&self.name(dep)) {
                    let mut path = vec![self.name(dep)];
                    let mut at = id;
                    while at != root {
                        path.push(self.name(at));
                        at = reached_from[at];
                    }
                    path.push("pool-core");
                    path.reverse();
                    violations.push(Violation::new(
                        Check::PoolCoreDependency,
                        format!(
                            "pool-core pulls in `{}` through {}: pool-core knows nothing of \
                             Docker, Kubernetes or HTTP servers",
                            self.name(dep),
                            path.join(" -> ")
                        ),
                    ));
                }
            }
        }
        violations
    }

    /// Every lib and bin root of every member opens with `//!` docs.
    fn crate_doc_violations(&self) -> Result<Vec<Violation>, String> {
        let mut violations = Vec::new();
        for member in &self.members {
            let Some(package) = self.packages.get(member) else { continue };
            for (kind, path) in &package.roots {
                if !opens_with_crate_docs(&read(path)?) {
                    violations.push(Violation::new(
                        Check::CrateDocs,
                        format!(
                            "the {kind} root {} of `{}` does not open with `//!` docs saying \
                             what the crate is for",
                            path.display(),
                            package.name
                        ),
                    ));
                }
            }
        }
        Ok(violations)
    }
}

// ---------------------------------------------------------------------------------------------
// Sources

/// Whether the first non-blank line of a crate root is a `//!` doc comment.
fn opens_with_crate_docs(source: &str) -> bool {
    source.lines().map(str::trim).find(|line| !line.is_empty()).is_some_and(|line| {
        line.starts_with("//!") && line.trim_start_matches("//!").trim().len() > 1
    })
}

/// `todo!`, `unimplemented!` and `dbg!` in any `.rs` file under `dir`.
fn forbidden_macro_violations(dir: &Path) -> Result<Vec<Violation>, String> {
    let mut violations = Vec::new();
    for path in rust_files(dir)? {
        for (number, line) in read(&path)?.lines().enumerate() {
            for name in FORBIDDEN_MACROS {
                if invokes_macro(line, name) {
                    violations.push(Violation::new(
                        Check::ForbiddenMacro,
                        format!(
                            "{}:{}: `{name}!` has no place in the crates",
                            path.display(),
                            number + 1
                        ),
                    ));
                }
            }
        }
    }
    Ok(violations)
}

/// Whether `line` contains `name!` as a whole identifier.
fn invokes_macro(line: &str, name: &str) -> bool {
    let needle = format!("{name}!");
    line.match_indices(&needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The `.rs` files under `dir`, skipping hidden directories and build output.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir)
            .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        for entry in entries {
            let path =
                entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?.path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The facade's `src/` holds only `lib.rs`, and `lib.rs` only re-exports.
fn facade_source_violations(src: &Path) -> Result<Vec<Violation>, String> {
    let mut violations = Vec::new();
    for path in rust_files(src)? {
        if path != src.join("lib.rs") {
            violations.push(Violation::new(
                Check::FacadeSource,
                format!("{}: the facade has one source file, src/lib.rs", path.display()),
            ));
        }
    }
    for item in non_reexport_items(&read(&src.join("lib.rs"))?) {
        violations.push(Violation::new(
            Check::FacadeSource,
            format!("the facade's lib.rs holds `{item}`: it contains re-exports only"),
        ));
    }
    Ok(violations)
}

/// The top-level items of `source` that are not `pub use` re-exports.
///
/// Comments and attributes are skipped; this is a scanner, not a Rust parser, and is meant for
/// the facade's plain source only (no character literals, no `]` inside attribute strings).
fn non_reexport_items(source: &str) -> Vec<String> {
    let code: Vec<char> = strip_comments(source).chars().collect();
    let mut items = Vec::new();
    let mut at = 0;
    while at < code.len() {
        if code[at].is_whitespace() {
            at += 1;
            continue;
        }
        let start = at;
        let is_attribute = code[at] == '#';
        let mut depth = 0usize;
        while at < code.len() {
            let c = code[at];
            at += 1;
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => {
                    depth = depth.saturating_sub(1);
                    // A block closes its item unless a `;` follows, as in `use a::{b, c};`.
                    let semicolon_follows =
                        code[at..].iter().find(|c| !c.is_whitespace()) == Some(&';');
                    let closes_item =
                        (c == '}' && !semicolon_follows) || (is_attribute && c == ']');
                    if depth == 0 && closes_item {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
        }
        if is_attribute {
            continue;
        }
        let item = code[start..at].iter().collect::<String>();
        let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
        if !item.starts_with("pub use ") {
            items.push(item);
        }
    }
    items
}

/// `source` without `//` and `/* */` comments; string literals are kept as they are.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    if c == '\\' {
                        out.extend(chars.next());
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Each feature has a `##` doc comment in the manifest and is named in the crate docs.
fn feature_doc_violations(manifest: &str, lib: &str, features: &[String]) -> Vec<Violation> {
    let crate_docs: String = lib
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let manifest_lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    let mut violations = Vec::new();
    for feature in features {
        let declared = manifest_lines.iter().position(|line| {
            line.strip_prefix(feature.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        let documented =
            declared.is_some_and(|at| at > 0 && manifest_lines[at - 1].starts_with("##"));
        if !documented {
            violations.push(Violation::new(
                Check::FeatureDocs,
                format!("feature `{feature}` has no `##` doc comment above it in Cargo.toml"),
            ));
        }
        if !crate_docs.contains(&format!("`{feature}`")) {
            violations.push(Violation::new(
                Check::FeatureDocs,
                format!("feature `{feature}` is not named in the crate docs' feature flags"),
            ));
        }
    }
    violations
}

/// Every crate with features has its docs built with its defaults alone by CI's doc step,
/// where a link to a module behind a feature that is off shows.
fn docs_at_defaults_violations(with_features: &[&str], documented: &[&str]) -> Vec<Violation> {
    with_features
        .iter()
        .filter(|name| !documented.contains(name))
        .map(|name| {
            Violation::new(
                Check::DocsAtDefaults,
                format!(
                    "`{name}` has features, but CI's doc step does not document it with its \
                     defaults: add `--package {name}` there (xtask/src/ci.rs)"
                ),
            )
        })
        .collect()
}

/// `.ci/run` runs exactly the command in the README's test-command block.
fn ci_command_violations(readme: &str, ci_run: &str) -> Vec<Violation> {
    let mut lines = readme.lines().skip_while(|line| !line.trim().starts_with(TEST_COMMAND_MARKER));
    let readme_command = lines
        .nth(1)
        .filter(|fence| fence.trim().starts_with("```"))
        .and_then(|_| lines.next())
        .map(str::trim);
    let Some(readme_command) = readme_command else {
        return vec![Violation::new(
            Check::CiCommand,
            format!(
                "README.md has no test command: a `{TEST_COMMAND_MARKER} ... -->` line \
                 followed by a fenced block whose first line is the command"
            ),
        )];
    };
    let ci_command =
        ci_run.lines().map(str::trim).rfind(|line| !line.is_empty() && !line.starts_with('#'));
    match ci_command {
        Some(command) if command == readme_command => Vec::new(),
        Some(command) => vec![Violation::new(
            Check::CiCommand,
            format!(
                "`.ci/run` runs `{command}` but the README's test command is `{readme_command}`"
            ),
        )],
        None => vec![Violation::new(
            Check::CiCommand,
            format!(
                "`.ci/run` runs nothing; it must run the README's test command `{readme_command}`"
            ),
        )],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    /// The real metadata of this workspace, read once per test process.
    fn real_metadata() -> Value {
        static METADATA: OnceLock<Value> = OnceLock::new();
        METADATA.get_or_init(|| cargo_metadata(&root()).expect("cargo metadata runs")).clone()
    }

    fn id_of(metadata: &Value, name: &str) -> String {
        metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|package| package["name"] == name)
            .unwrap_or_else(|| panic!("no package {name}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn has_package(metadata: &Value, name: &str) -> bool {
        metadata["packages"].as_array().unwrap().iter().any(|package| package["name"] == name)
    }

    /// Adds an outside package with no dependencies; returns its id.
    fn add_package(metadata: &mut Value, name: &str) -> String {
        let id = format!("registry+https://github.com/rust-lang/crates.io-index#{name}@1.0.0");
        metadata["packages"].as_array_mut().unwrap().push(json!({
            "name": name, "id": id, "manifest_path": format!("/registry/{name}/Cargo.toml"),
            "targets": [], "features": {},
        }));
        metadata["resolve"]["nodes"].as_array_mut().unwrap().push(json!({"id": id, "deps": []}));
        id
    }

    /// Adds an edge `from -> to` of `kind` (None for normal, "dev", "build").
    fn add_edge(metadata: &mut Value, from: &str, to: &str, kind: Option<&str>) {
        let (from, to) = (id_of(metadata, from), id_of(metadata, to));
        let node = metadata["resolve"]["nodes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|node| node["id"] == from.as_str())
            .unwrap();
        node["deps"].as_array_mut().unwrap().push(json!({
            "name": "doctored", "pkg": to, "dep_kinds": [{"kind": kind, "target": null}],
        }));
    }

    fn violations_of(metadata: &Value) -> Vec<Violation> {
        Workspace::from_metadata(metadata).expect("metadata parses").dependency_violations()
    }

    fn assert_one(violations: &[Violation], check: Check, needle: &str) {
        let matching: Vec<_> = violations.iter().filter(|v| v.check == check).collect();
        assert_eq!(matching.len(), 1, "want one {check:?} violation, got {violations:#?}");
        assert!(matching[0].message.contains(needle), "{:?} lacks {needle:?}", matching[0].message);
    }

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-tidy-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, relative: &str, text: &str) -> PathBuf {
            let path = self.0.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_workspace_keeps_every_invariant() {
        let violations = check_workspace(&root()).expect("tidy runs");
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(violations.is_empty(), "tidy violations:\n{}", listed.join("\n"));
    }

    #[test]
    fn every_workspace_member_has_a_layer() {
        let metadata = real_metadata();
        let workspace = Workspace::from_metadata(&metadata).unwrap();
        let names: BTreeSet<&str> = workspace.members.iter().map(|id| workspace.name(id)).collect();
        let expected = [
            "backend-docker",
            "backend-k8s",
            "backend-process",
            "backend-worker",
            "benches",
            "cache-tiers",
            "examples",
            "gateway",
            "perf-monitor",
            "pool-core",
            "resilience",
            "serverless-managers",
            "xtask",
        ];
        assert_eq!(names, expected.into_iter().collect());
    }

    #[test]
    fn a_banned_crate_deep_under_pool_core_is_named_with_its_path() {
        let mut metadata = real_metadata();
        add_package(&mut metadata, "tower");
        add_package(&mut metadata, "hyper");
        add_edge(&mut metadata, "pool-core", "tower", None);
        add_edge(&mut metadata, "tower", "hyper", None);
        assert_one(
            &violations_of(&metadata),
            Check::PoolCoreDependency,
            "pool-core -> tower -> hyper",
        );
    }

    #[test]
    fn each_banned_crate_is_caught_as_a_build_dependency_too() {
        for banned in BANNED_UNDER_POOL_CORE {
            let mut metadata = real_metadata();
            // Some banned crates are in the workspace's real tree (bollard, hyper, ... under
            // the backends and the gateway), with banned crates of their own under them: the
            // direct edge is the one this test is about.
            if !has_package(&metadata, banned) {
                add_package(&mut metadata, banned);
            }
            add_edge(&mut metadata, "pool-core", banned, Some("build"));
            let direct = format!("through pool-core -> {banned}:");
            let violations = violations_of(&metadata);
            let matching: Vec<_> = violations
                .iter()
                .filter(|v| v.check == Check::PoolCoreDependency && v.message.contains(&direct))
                .collect();
            assert_eq!(matching.len(), 1, "want {direct:?} once, got {violations:#?}");
        }
    }

    #[test]
    fn a_dev_dependency_of_pool_core_is_not_in_its_shipped_tree() {
        let mut metadata = real_metadata();
        add_package(&mut metadata, "axum");
        add_edge(&mut metadata, "pool-core", "axum", Some("dev"));
        assert_eq!(violations_of(&metadata), Vec::new());
    }

    #[test]
    fn layer_zero_crates_may_not_depend_on_each_other() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "perf-monitor", "pool-core", None);
        assert_one(&violations_of(&metadata), Check::Layering, "layer-0 crates do not depend");
    }

    #[test]
    fn backends_may_not_depend_on_each_other_even_for_tests() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "backend-docker", "backend-process", Some("dev"));
        assert_one(
            &violations_of(&metadata),
            Check::Layering,
            "backends never depend on each other",
        );
    }

    #[test]
    fn a_lower_layer_may_not_depend_on_a_higher_one() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "pool-core", "resilience", None);
        assert_one(
            &violations_of(&metadata),
            Check::Layering,
            "`pool-core` (L0) depends on `resilience` (L1)",
        );
    }

    #[test]
    fn only_the_facade_examples_and_benches_may_depend_on_gateway() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "resilience", "gateway", None);
        assert_one(
            &violations_of(&metadata),
            Check::Layering,
            "only the facade, examples and benches",
        );

        let mut metadata = real_metadata();
        add_edge(&mut metadata, "examples", "gateway", None);
        add_edge(&mut metadata, "benches", "backend-docker", None);
        assert_eq!(violations_of(&metadata), Vec::new());
    }

    #[test]
    fn resilience_and_backends_may_build_on_the_layers_below() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "resilience", "pool-core", None);
        add_edge(&mut metadata, "backend-process", "pool-core", None);
        add_edge(&mut metadata, "backend-docker", "resilience", None);
        add_edge(&mut metadata, "gateway", "backend-k8s", None);
        assert_eq!(violations_of(&metadata), Vec::new());
    }

    #[test]
    fn xtask_may_not_depend_on_the_workspace() {
        let mut metadata = real_metadata();
        add_edge(&mut metadata, "xtask", "pool-core", None);
        assert_one(
            &violations_of(&metadata),
            Check::Layering,
            "xtask depends on no workspace crate",
        );
    }

    #[test]
    fn the_facade_may_not_depend_on_outside_crates() {
        let mut metadata = real_metadata();
        add_package(&mut metadata, "tokio");
        add_edge(&mut metadata, FACADE, "tokio", None);
        assert_one(&violations_of(&metadata), Check::FacadeDependency, "`tokio`");
    }

    #[test]
    fn a_member_without_a_layer_is_reported() {
        let mut metadata = real_metadata();
        let id = add_package(&mut metadata, "new-crate");
        metadata["workspace_members"].as_array_mut().unwrap().push(json!(id));
        assert_one(&violations_of(&metadata), Check::UnknownMember, "`new-crate` has no layer");
    }

    #[test]
    fn a_crate_root_without_inner_docs_is_reported() {
        let scratch = Scratch::new("docs");
        let undocumented = scratch.write("bad/src/lib.rs", "// a plain comment\npub fn f() {}\n");
        let documented = scratch.write("good/src/lib.rs", "\n//! What this crate is for.\n");
        let mut metadata = real_metadata();
        let bad = add_package(&mut metadata, "bad");
        let good = add_package(&mut metadata, "good");
        for (id, path) in [(&bad, &undocumented), (&good, &documented)] {
            let package = metadata["packages"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|package| package["id"] == id.as_str())
                .unwrap();
            package["targets"] = json!([{"kind": ["lib"], "src_path": path}]);
            metadata["workspace_members"].as_array_mut().unwrap().push(json!(id));
        }
        let workspace = Workspace::from_metadata(&metadata).unwrap();
        let violations = workspace.crate_doc_violations().unwrap();
        assert_one(&violations, Check::CrateDocs, "of `bad`");
        assert!(!opens_with_crate_docs("//!\nfn main() {}"), "an empty `//!` line is not docs");
    }

    #[test]
    fn forbidden_macros_are_found_with_file_and_line() {
        let scratch = Scratch::new("macros");
        // The fixtures spell the macros with `{bang}` so that this file itself holds none.
        let bang = '!';
        scratch.write("a/src/lib.rs", &format!("fn f() {{\n    todo{bang}()\n}}\n"));
        scratch
            .write("b/src/deep/mod.rs", &format!("fn g(x: u8) -> u8 {{\n\n    dbg{bang}(x)\n}}\n"));
        scratch
            .write("c/tests/t.rs", &format!("fn h() {{ std::unimplemented{bang}(\"later\") }}\n"));
        scratch.write(
            "d/src/lib.rs",
            &format!("// a todo list, my_todo{bang}(), and `todo` are fine\n"),
        );
        scratch.write("target/debug/build/x.rs", &format!("todo{bang}()\n"));
        let violations = forbidden_macro_violations(&scratch.0).unwrap();
        let found: Vec<&str> = violations.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(violations.len(), 3, "{found:#?}");
        assert!(
            found[0].ends_with("a/src/lib.rs:2: `todo!` has no place in the crates"),
            "{found:?}"
        );
        assert!(found[1].contains("deep/mod.rs:3: `dbg!`"), "{found:?}");
        assert!(found[2].contains("t.rs:1: `unimplemented!`"), "{found:?}");
    }

    #[test]
    fn facade_items_other_than_reexports_are_reported() {
        let fine = "//! Docs.\n#![cfg_attr(docsrs, feature(doc_cfg))]\n/* block */\n\
                    #[cfg(feature = \"a\")]\n#[doc(inline)]\npub use a as b; // trailing\n\
                    pub use c::{d, e};\n";
        assert_eq!(non_reexport_items(fine), Vec::<String>::new());
        let bad = format!("{fine}pub fn helper() -> u8 {{ 1 }}\nmod inner;\npub struct S;\n");
        assert_eq!(
            non_reexport_items(&bad),
            ["pub fn helper() -> u8 { 1 }", "mod inner;", "pub struct S;"]
        );
    }

    #[test]
    fn a_second_source_file_in_the_facade_is_reported() {
        let scratch = Scratch::new("facade");
        scratch.write("src/lib.rs", "//! Docs.\npub use a as b;\n");
        assert_eq!(facade_source_violations(&scratch.0.join("src")).unwrap(), Vec::new());
        scratch.write("src/extra.rs", "pub fn f() {}\n");
        let violations = facade_source_violations(&scratch.0.join("src")).unwrap();
        assert_one(&violations, Check::FacadeSource, "extra.rs");
    }

    #[test]
    fn undocumented_features_are_reported_in_both_places() {
        let manifest = "[features]\n## Documented.\ndefault = [\"a\"]\n## A.\na = []\nb = []\n";
        let lib = "//! # Feature flags\n//! - `default`: a.\n//! - `a`: the a crate.\n";
        let features = ["default", "a", "b"].map(String::from);
        let violations = feature_doc_violations(manifest, lib, &features);
        let messages: Vec<&str> = violations.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "feature `b` has no `##` doc comment above it in Cargo.toml",
                "feature `b` is not named in the crate docs' feature flags",
            ]
        );
    }

    #[test]
    fn a_crate_with_features_left_out_of_the_doc_step_is_reported() {
        let documented = crate::ci::documented_at_defaults();
        assert!(documented.contains(&"pool-core"), "the doc step's packages: {documented:?}");
        assert_eq!(docs_at_defaults_violations(&["pool-core"], &documented), Vec::new());
        assert_one(
            &docs_at_defaults_violations(&["pool-core", "new-backend"], &documented),
            Check::DocsAtDefaults,
            "`new-backend` has features",
        );
    }

    #[test]
    fn ci_run_must_run_exactly_the_readme_test_command() {
        let readme = "# X\n<!-- test-command: .ci/run runs this -->\n```sh\ncargo xtask ci\n```\n";
        let matching = "#!/usr/bin/env bash\nset -euo pipefail\ncargo xtask ci\n";
        assert_eq!(ci_command_violations(readme, matching), Vec::new());

        let different = "#!/usr/bin/env bash\ncargo xtask ci --fast\n";
        assert_one(
            &ci_command_violations(readme, different),
            Check::CiCommand,
            "runs `cargo xtask ci --fast`",
        );
        assert_one(&ci_command_violations(readme, "#!/bin/sh\n"), Check::CiCommand, "runs nothing");
        assert_one(
            &ci_command_violations("# X\n", matching),
            Check::CiCommand,
            "has no test command",
        );
    }
}
