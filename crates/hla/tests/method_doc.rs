//! `docs/method.md` is the method explained equation by equation with links into the code; this
//! test keeps those links honest and the coverage from shrinking.
//!
//! Link convention (stated at the top of method.md as well):
//! - A *code link* is a markdown link whose text is one backticked Rust path and whose target is
//!   a relative `.rs` path without anchor: [`name`](../crates/x/src/y.rs).
//!   - `name` (also `Type::name`, where only the last segment is looked up) must be defined in
//!     that file: a line, outside `//` comments, containing `fn name`, `struct name`,
//!     `enum name`, `trait name`, `type name`, `const name`, `static name` or `mod name`.
//!   - `Type.field` must have `struct Type` and a field line `field:` in that file (used for the
//!     knobs of `HlaConfig`).
//! - Every other relative link (`](../…)`) must point to an existing file or folder.
//! - Required sections are headings (any level) that start with `Eq. k` (k = 3 … 13),
//!   `Alg. 1 line k` (k = 0 … 21), `TWN` and `TTQ`; they appear in that order within each group,
//!   and each one (its text up to the next heading) holds at least one code link to a `#[test]`
//!   function, i.e. names the test that pins it.
//!
//! - Every public item of `crates/hla` (and every module, through its `//!` docs) links to a
//!   section of the guide, `[..](crate::guide#anchor)`, whose `<a id="anchor">` exists.
//!
//! All failures are collected and printed together. Run:
//! `cargo test --release -p hla-core --test method_doc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root (this crate is `<root>/crates/hla`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The document and the folder its relative links start from.
fn doc() -> (String, PathBuf) {
    let path = root().join("docs/method.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
    (text, root().join("docs"))
}

/// One markdown link `[text](target)` with the line it is on (1-based).
#[derive(Clone, Debug)]
struct Link {
    line: usize,
    text: String,
    target: String,
}

/// One heading and the links of its body (up to the next heading).
#[derive(Debug)]
struct Section {
    line: usize,
    title: String,
    links: Vec<Link>,
}

/// Lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, l) in text.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, l));
        }
    }
    out
}

/// Every `[text](target)` on one line (no nesting; targets without spaces).
fn links_of(line_no: usize, l: &str) -> Vec<Link> {
    let mut out = Vec::new();
    let mut rest = l;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let text = &after[..close];
        if text.contains('[') {
            rest = after; // a stray `[` before the real link: start again after it
            continue;
        }
        let tail = &after[close + 2..];
        let Some(end) = tail.find(')') else { break };
        out.push(Link {
            line: line_no,
            text: text.to_string(),
            target: tail[..end].to_string(),
        });
        rest = &tail[end + 1..];
    }
    out
}

/// The document cut into sections at its headings.
fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (n, l) in prose_lines(text) {
        if l.starts_with('#') {
            let title = l.trim_start_matches('#').trim().to_string();
            out.push(Section {
                line: n,
                title,
                links: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.links.extend(links_of(n, l));
        }
    }
    out
}

/// The Rust path of a code link's text (`` `a::b` `` → `a::b`), if it is one.
fn code_path(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('`')?.strip_suffix('`')?;
    let ok = !inner.is_empty()
        && inner.split("::").flat_map(|s| s.split('.')).all(|seg| {
            !seg.is_empty()
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !seg.starts_with(|c: char| c.is_ascii_digit())
        });
    ok.then_some(inner)
}

/// The code of one source line: empty for comment lines, cut at a trailing `//` comment.
fn code_part(l: &str) -> &str {
    let t = l.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match t.find("//") {
        Some(i) => &t[..i],
        None => t,
    }
}

/// Identifier tokens of a code line, in order.
fn tokens(code: &str) -> Vec<&str> {
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
        .collect()
}

const DEF_KEYWORDS: [&str; 8] = [
    "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
];

/// Line indices (0-based) where `name` is defined by one of [`DEF_KEYWORDS`].
fn definitions(src: &str, name: &str) -> Vec<usize> {
    src.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = tokens(code_part(l));
            t.windows(2)
                .any(|w| DEF_KEYWORDS.contains(&w[0]) && w[1] == name)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether a `struct ty` exists in `src` and a field line `field:` too.
fn has_field(src: &str, ty: &str, field: &str) -> bool {
    let has_struct = src.lines().any(|l| {
        tokens(code_part(l))
            .windows(2)
            .any(|w| w[0] == "struct" && w[1] == ty)
    });
    let has_field = src.lines().any(|l| {
        let c = code_part(l);
        let c = c.strip_prefix("pub(crate) ").unwrap_or(c);
        let c = c.strip_prefix("pub ").unwrap_or(c);
        c.strip_prefix(field)
            .map(|r| {
                let r = r.trim_start();
                r.starts_with(':') && !r.starts_with("::")
            })
            .unwrap_or(false)
    });
    has_struct && has_field
}

/// Whether the `fn` defined at line `i` carries `#[test]` among the attributes above it.
fn is_test_fn(src: &str, i: usize) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    if !tokens(code_part(lines[i])).contains(&"fn") {
        return false;
    }
    for l in lines[..i].iter().rev() {
        let t = l.trim();
        if t.starts_with("#[test]") {
            return true;
        }
        if !(t.starts_with("#[") || t.starts_with("///") || t.starts_with("//")) {
            return false;
        }
    }
    false
}

/// What a checked code link resolves to.
enum Resolved {
    /// A definition that is a `#[test]` function.
    Test,
    /// Any other definition (or a struct field).
    Item,
}

/// Checks one link; `Err` explains the failure.
fn check_link(
    link: &Link,
    base: &Path,
    cache: &mut BTreeMap<PathBuf, Option<String>>,
) -> Result<Option<Resolved>, String> {
    if !link.target.starts_with("../") {
        return Ok(None); // absolute URLs and in-page anchors are not checked here
    }
    let (path_part, anchor) = match link.target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (link.target.as_str(), None),
    };
    let path = base.join(path_part);
    let code = code_path(&link.text).filter(|_| path_part.ends_with(".rs"));
    let Some(code) = code else {
        return if path.exists() {
            Ok(None)
        } else {
            Err(format!(
                "line {}: {} does not exist",
                link.line, link.target
            ))
        };
    };
    if anchor.is_some() {
        return Err(format!(
            "line {}: code link {} must not carry an anchor",
            link.line, link.target
        ));
    }
    let src = cache
        .entry(path.clone())
        .or_insert_with(|| std::fs::read_to_string(&path).ok());
    let Some(src) = src.as_deref() else {
        return Err(format!(
            "line {}: `{code}`: file {path_part} does not exist",
            link.line
        ));
    };
    if let Some((ty, field)) = code.split_once('.') {
        return if has_field(src, ty, field) {
            Ok(Some(Resolved::Item))
        } else {
            Err(format!(
                "line {}: `{code}`: no struct {ty} with field {field} in {path_part}",
                link.line
            ))
        };
    }
    let name = code.rsplit("::").next().expect("split yields one item");
    let defs = definitions(src, name);
    if defs.is_empty() {
        return Err(format!(
            "line {}: `{code}`: no definition of {name} in {path_part}",
            link.line
        ));
    }
    Ok(Some(if defs.iter().any(|&i| is_test_fn(src, i)) {
        Resolved::Test
    } else {
        Resolved::Item
    }))
}

/// The section titles the document must have, in order within each group.
fn required() -> Vec<Vec<String>> {
    vec![
        (3..=13).map(|k| format!("Eq. {k}")).collect(),
        (0..=21).map(|k| format!("Alg. 1 line {k}")).collect(),
        vec!["TWN".to_string(), "TTQ".to_string()],
    ]
}

/// Whether `title` starts with `key` as a whole token (`Eq. 1` does not match `Eq. 13`).
fn title_matches(title: &str, key: &str) -> bool {
    title
        .strip_prefix(key)
        .map(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric()))
        .unwrap_or(false)
}

#[test]
fn every_code_link_names_a_definition_in_its_file() {
    let (text, base) = doc();
    let mut cache = BTreeMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, l) in prose_lines(&text) {
        for link in links_of(n, l) {
            match check_link(&link, &base, &mut cache) {
                Ok(Some(_)) => checked += 1,
                Ok(None) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} code links in docs/method.md are broken:\n{}",
        failures.len(),
        checked + failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 100,
        "only {checked} code links: the document shrank"
    );
}

#[test]
fn every_equation_algorithm_line_and_baseline_has_a_section_with_code_and_a_test() {
    let (text, base) = doc();
    let secs = sections(&text);
    let mut cache = BTreeMap::new();
    let mut failures = Vec::new();
    for group in required() {
        let mut last_line = 0;
        for key in group {
            let found: Vec<&Section> = secs
                .iter()
                .filter(|s| title_matches(&s.title, &key))
                .collect();
            let Some(s) = found.first() else {
                failures.push(format!("no section titled `{key} …`"));
                continue;
            };
            if found.len() > 1 {
                failures.push(format!("`{key}` has {} sections", found.len()));
            }
            if s.line < last_line {
                failures.push(format!("`{key}` (line {}) is out of order", s.line));
            }
            last_line = s.line;
            let (mut code, mut tests) = (0, 0);
            for link in &s.links {
                match check_link(link, &base, &mut cache) {
                    Ok(Some(Resolved::Test)) => tests += 1,
                    Ok(Some(Resolved::Item)) => code += 1,
                    _ => {}
                }
            }
            if code == 0 {
                failures.push(format!(
                    "`{}` (line {}) links no code that resolves",
                    s.title, s.line
                ));
            }
            if tests == 0 {
                failures.push(format!(
                    "`{}` (line {}) names no #[test] function that resolves",
                    s.title, s.line
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "docs/method.md coverage:\n{}",
        failures.join("\n")
    );
}

/// The checker itself: it must reject what it is meant to reject.
#[test]
fn checker_rejects_missing_definitions_files_and_fields() {
    let base = root().join("docs");
    let mut cache = BTreeMap::new();
    let mut check = |text: &str, target: &str| {
        let link = Link {
            line: 1,
            text: text.to_string(),
            target: target.to_string(),
        };
        check_link(&link, &base, &mut cache)
    };
    let ternary = "../crates/hla/src/ternary.rs";
    let config = "../crates/hla/src/config.rs";
    assert!(matches!(
        check("`ternarize_rows`", ternary),
        Ok(Some(Resolved::Item))
    ));
    assert!(matches!(
        check("`t2_t5_ternary_rows`", ternary),
        Ok(Some(Resolved::Test))
    ));
    assert!(matches!(check("`HlaConfig.lambda_d`", config), Ok(Some(_))));
    assert!(check("`no_such_fn`", ternary).is_err());
    assert!(check("`ternarize_rows`", "../crates/hla/src/nope.rs").is_err());
    assert!(check("`HlaConfig.no_such_knob`", config).is_err());
    assert!(check("spec", "../no/such/file.md").is_err());
    // a name that appears only in a comment or a call is not a definition
    assert!(definitions("// fn ghost()\nlet y = ghost();", "ghost").is_empty());
    assert_eq!(definitions("pub(crate) fn ghost<F>() {}", "ghost"), vec![0]);
    assert!(title_matches("Eq. 1 — x", "Eq. 1") && !title_matches("Eq. 13 — x", "Eq. 1"));
    // a stray `[` before a link does not hide the link
    let l = links_of(1, "T(t) [paper] and [`s_scale`](../a.rs)");
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].text.as_str(), l[0].target.as_str()),
        ("`s_scale`", "../a.rs")
    );
}

/// The anchors `<a id="…">` of docs/method.md.
fn anchors(text: &str) -> Vec<String> {
    text.split("<a id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_string))
        .collect()
}

/// The guide anchors a doc block links to (`](crate::guide#anchor)`).
fn guide_links(block: &[&str]) -> Vec<String> {
    block
        .iter()
        .flat_map(|l| l.split("](crate::guide#").skip(1))
        .filter_map(|s| s.split(')').next().map(str::to_string))
        .collect()
}

/// Every public item of crates/hla (fn, struct, enum, trait, const, type, static, and every
/// module through its `//!` docs) links to an existing section of the guide.
#[test]
fn every_public_item_links_to_its_guide_section() {
    let (text, _) = doc();
    let known = anchors(&text);
    let mut problems = Vec::new();
    let mut files = vec![root().join("crates/hla/src")];
    let mut checked = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") || p.ends_with("testutil.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        let name = p.strip_prefix(root()).unwrap().display().to_string();
        let module_doc: Vec<&str> = lines
            .iter()
            .take_while(|l| l.starts_with("//!"))
            .copied()
            .collect();
        let mut check = |what: String, block: &[&str]| {
            let links = guide_links(block);
            if links.is_empty() {
                problems.push(format!("{what}: no `Guide: [..](crate::guide#..)` link"));
            }
            for a in links.iter().filter(|a| !known.contains(a)) {
                problems.push(format!("{what}: guide anchor `{a}` does not exist"));
            }
        };
        check(format!("{name} (module docs)"), &module_doc);
        checked += 1;
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let rest = t
                .strip_prefix("pub ")
                .map(|r| r.strip_prefix("const fn ").map_or(r, |x| x));
            let Some(rest) = rest else { continue };
            let kinds = [
                "fn ", "struct ", "enum ", "trait ", "const ", "type ", "static ",
            ];
            if !kinds.iter().any(|k| rest.starts_with(k)) && !t.starts_with("pub const fn ") {
                continue;
            }
            // The doc block above the item, past its attributes.
            let mut j = i;
            while j > 0 && lines[j - 1].trim_start().starts_with("#[") {
                j -= 1;
            }
            let mut k = j;
            while k > 0 && lines[k - 1].trim_start().starts_with("///") {
                k -= 1;
            }
            check(
                format!("{name}:{} `{}`", i + 1, t.trim_end_matches('{').trim()),
                &lines[k..j],
            );
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} items found");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
