//! The server crate's layers: each top-level module (a file or a folder of `src/`) may use
//! only modules of a lower layer, read from the `crate::` paths in its source. With the
//! ranks strictly ordered there can be no import cycle between modules either.
//! ARCHITECTURE.md describes each layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module, lowest first. A module may use those of a lower rank only.
const LAYERS: &[(&str, u32)] = &[
    ("ids", 0),
    ("rng", 0),
    ("engine", 1),
    ("runtime", 1),
    ("tls", 1),
    ("config", 2),
    ("store", 3),
    ("events", 3),
    ("auth", 4),
    ("lifecycle", 4),
    ("remote", 3),
    ("jobs", 5),
    ("service", 6),
    ("seed", 7),
    ("http", 8),
    ("serve", 9),
    ("agent", 9),
];

/// The one module that may name a database driver (`sqlx`, `rusqlite`): everything else
/// asks `store`, so another database can sit beside SQLite there.
const DATABASE: &[&str] = &["store"];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None`: the crate root or the binary).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The code of a file without its comments (a comment may name any module) and without its
/// unit tests (a test may look below the layers, e.g. at what was stored).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named by `crate::<name>` in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // `crate::`, not `doppel_crate::` or `$crate::`.
            !code[..*i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            wrong.push(format!("{module}: not in LAYERS (add it, with its rank)"));
            continue;
        };
        seen.insert(module.clone());
        let code = code(file);
        for used in crate_paths(&code) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r < own => {}
                Some(r) => wrong.push(format!(
                    "{} uses crate::{used} (layer {r}), not below its own ({own})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{} uses crate::{used}, which is not in LAYERS",
                    file.display()
                )),
            }
        }
        let names_driver = code.contains("sqlx::") || code.contains("rusqlite::");
        if names_driver && !DATABASE.contains(&module.as_str()) {
            wrong.push(format!(
                "{} names a database driver; only {DATABASE:?} may",
                file.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // Every layer is there: a module renamed away cannot leave the rule checking nothing.
    let listed: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(seen, listed, "LAYERS names modules that are gone");
}

#[test]
fn the_check_sees_what_it_checks() {
    let probe = std::env::temp_dir().join(format!("layers-probe-{}.rs", std::process::id()));
    std::fs::write(
        &probe,
        "// crate::http in a comment\nuse crate::store::Db;\n#[cfg(test)]\nmod tests { use crate::http; }",
    )
    .unwrap();
    let read = code(&probe);
    std::fs::remove_file(&probe).unwrap();
    assert_eq!(crate_paths(&read), BTreeSet::from(["store".to_string()]));
    let code = "use crate::store::Db;\nfn f() { crate::ids::now_ms(); $crate::x; other_crate::y }";
    assert_eq!(
        crate_paths(code),
        BTreeSet::from(["ids".to_string(), "store".to_string()])
    );
    assert_eq!(
        module_of(&src().join("service/copy.rs")).as_deref(),
        Some("service")
    );
    assert_eq!(module_of(&src().join("ids.rs")).as_deref(), Some("ids"));
    assert_eq!(module_of(&src().join("lib.rs")), None);
}
