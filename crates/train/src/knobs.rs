//! The knob reference `docs/knobs.md`, generated from the config types themselves: names,
//! types, defaults and value lists from their serde attributes and doc comments (through
//! `schemars`), numeric ranges from the same `NUMERIC` tables that `validate` enforces. A test
//! (`tests/knobs_doc.rs`) fails when the file is stale or a knob or value has no doc line.

use crate::config::{Config, DataConfig, ModelConfig, QuantizeConfig, TrainConfig};
use hla_core::config::{Domain, NumericKnob};
use hla_core::HlaConfig;
use serde_json::{Map, Value};

/// One row of the reference: everything `docs/knobs.md` says about one knob.
#[derive(Debug, Clone, PartialEq)]
pub struct Knob {
    /// Dotted key as in a config file or `--set` (`hla.t_start_pct`).
    pub key: String,
    /// `integer`, `real`, `boolean`, `string`, `list of strings` or `choice`, with
    /// `(optional)` when the knob may be left unset.
    pub ty: String,
    /// The default, as TOML would write it; `required` or `unset` when there is none.
    pub default: String,
    /// The allowed values: a numeric range, the list of choices, or `any`.
    pub allowed: String,
    /// What the knob changes: its doc comment, then its type's, then each choice's.
    pub doc: String,
    /// The paper's equations, Algorithm 1 lines and spec ambiguities (A1–A27) the doc names.
    pub refs: Vec<String>,
    /// Choices without a doc comment (must be empty).
    pub undocumented_choices: Vec<String>,
}

/// The numeric domains of one section, by field name.
fn domains<C>(table: &[NumericKnob<C>]) -> Vec<(&'static str, Domain)> {
    table.iter().map(|k| (k.name, k.domain)).collect()
}

/// Every knob of every section, in table order: top-level keys, then `[model]`, `[data]`,
/// `[train]`, `[quantize]`, `[hla]` (sorted by ambiguity number), `[report]`.
pub fn all() -> Vec<Knob> {
    let root = serde_json::to_value(schemars::schema_for!(Config)).expect("schema is JSON");
    let defs = root["$defs"].as_object().cloned().unwrap_or_default();
    let props = root["properties"].as_object().cloned().unwrap_or_default();
    let required = |schema: &Value, name: &str| {
        schema["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|v| v == name))
    };
    let mut out = Vec::new();
    for (name, p) in &props {
        if p.get("$ref").is_none() {
            out.push(knob(name, p, &defs, required(&root, name), &[]));
        }
    }
    for section in ["model", "data", "train", "quantize", "hla", "report"] {
        let Some(def) = props.get(section).and_then(|p| resolve(p, &defs)) else {
            continue;
        };
        let table = match section {
            "model" => domains(ModelConfig::NUMERIC),
            "data" => domains(DataConfig::NUMERIC),
            "train" => domains(TrainConfig::NUMERIC),
            "quantize" => domains(QuantizeConfig::NUMERIC),
            "hla" => domains(HlaConfig::NUMERIC),
            _ => Vec::new(),
        };
        let mut rows: Vec<Knob> = def["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, p)| {
                let key = format!("{section}.{name}");
                knob(&key, p, &defs, required(def, name), &table)
            })
            .collect();
        if section == "hla" {
            rows.sort_by_key(|k| (ambiguity_number(&k.refs), k.key.clone()));
        }
        out.extend(rows);
    }
    out
}

/// The lowest spec ambiguity A<n> a knob belongs to (knobs with none sort last).
fn ambiguity_number(refs: &[String]) -> u32 {
    refs.iter()
        .filter_map(|r| r.strip_prefix('A'))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .min()
        .unwrap_or(u32::MAX)
}

/// The object a `$ref` points to (or the schema itself).
fn resolve<'a>(p: &'a Value, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    match p.get("$ref").and_then(Value::as_str) {
        Some(r) => defs.get(r.rsplit('/').next()?),
        None => Some(p),
    }
}

fn knob(
    key: &str,
    p: &Value,
    defs: &Map<String, Value>,
    required: bool,
    table: &[(&'static str, Domain)],
) -> Knob {
    let field = key.rsplit('.').next().unwrap_or(key);
    let target = resolve(p, defs).unwrap_or(p);
    let mut doc = text(p);
    let mut undocumented_choices = Vec::new();
    let choices: Vec<(String, String)> = target["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["const"].as_str()?.to_string(), text(v))))
        .chain(
            target["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| Some((v.as_str()?.to_string(), String::new()))),
        )
        .collect();
    let types: Vec<&str> = match &target["type"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let optional = types.contains(&"null");
    let base = types.iter().copied().find(|t| *t != "null").unwrap_or("");
    let mut ty = match base {
        _ if !choices.is_empty() => "choice".to_string(),
        "integer" => "integer".to_string(),
        "number" => "real".to_string(),
        "boolean" => "boolean".to_string(),
        "array" => "list of strings".to_string(),
        other => other.to_string(),
    };
    if optional {
        ty.push_str(" (optional)");
    }
    if !choices.is_empty() {
        if doc.is_empty() {
            doc = text(target);
        }
        let listed: Vec<String> = choices
            .iter()
            .map(|(v, d)| {
                if d.is_empty() {
                    undocumented_choices.push(v.clone());
                    format!("`{v}`")
                } else {
                    format!("`{v}`: {d}")
                }
            })
            .collect();
        doc = join(&doc, &listed.join(" "));
    }
    let domain = table.iter().find(|(n, _)| *n == field).map(|(_, d)| *d);
    let allowed = match (domain, base) {
        _ if !choices.is_empty() => choices
            .iter()
            .map(|(v, _)| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        (Some(d), _) => format!("{d}"),
        (None, "boolean") => "`true`, `false`".to_string(),
        (None, "integer") => match target["format"].as_str() {
            Some(f @ ("uint64" | "uint32" | "uint")) => {
                format!("any unsigned integer ({f})")
            }
            _ => "any integer".to_string(),
        },
        (None, "number") => "any finite real".to_string(),
        _ => "any".to_string(),
    };
    let default = match p.get("default") {
        Some(Value::Null) | None if required => "required".to_string(),
        Some(Value::Null) | None => "unset".to_string(),
        Some(v) => toml_value(v),
    };
    Knob {
        key: key.to_string(),
        ty,
        default,
        allowed,
        refs: references(&doc),
        doc,
        undocumented_choices,
    }
}

/// A schema's description (its doc comment), on one line.
fn text(v: &Value) -> String {
    v["description"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a} {b}"),
    }
}

/// A JSON default written the way a TOML file would say it.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`\"{s}\"`"),
        Value::Array(a) if a.is_empty() => "`[]`".to_string(),
        other => format!("`{other}`"),
    }
}

/// The paper references a doc line names: `Eq. N`, `Eqs. N–M`, `Alg. 1 line N`, `A<n>`.
fn references(doc: &str) -> Vec<String> {
    let words: Vec<&str> = doc.split_whitespace().collect();
    let strip = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string();
    let mut refs = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).map(|n| strip(n)).unwrap_or_default();
        let core = strip(w);
        let r = if (core == "Eq" || core == "Eqs") && next.starts_with(|c: char| c.is_ascii_digit())
        {
            Some(format!("Eq. {next}"))
        } else if core == "line"
            && i >= 2
            && strip(words[i - 2]) == "Alg"
            && next.starts_with(|c: char| c.is_ascii_digit())
        {
            Some(format!("Alg. 1 line {next}"))
        } else if (core == "Table" || core == "Figure")
            && next.starts_with(|c: char| c.is_ascii_digit())
        {
            Some(format!("{core} {next}"))
        } else if core == "section" && next.starts_with(|c: char| c.is_ascii_digit()) {
            Some(format!("§{next}"))
        } else if core == "TWN" || core == "TTQ" {
            Some(core.clone())
        } else if core.len() >= 2
            && core.starts_with('A')
            && core[1..].split('(').next().is_some_and(|n| {
                !n.is_empty()
                    && n.chars().all(|c| c.is_ascii_digit())
                    && n.parse::<u32>().is_ok_and(|n| (1..=27).contains(&n))
            })
        {
            Some(core.split('(').next().unwrap_or(&core).to_string())
        } else {
            None
        };
        if let Some(r) = r {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
    refs
}

/// `docs/knobs.md`: one table per section.
pub fn markdown() -> String {
    let mut s = String::from(
        "# Every knob of a run configuration\n\n\
         Generated from the config types (`crates/train/src/config.rs`, `crates/hla/src/config.rs`): \
         do not edit by hand. Regenerate with\n\
         `HLA_BLESS=1 cargo test --release -p hla-train --test knobs_doc`; the same test fails when \
         this file is stale or a knob has no doc line.\n\n\
         A config file sets any subset of these keys in TOML sections (`[data]`, `[hla]`, …); \
         `--set key=value` overrides one on the command line; a misspelt key is an error. \
         Numeric ranges are the ones `validate` enforces (from the same tables). \
         A1–A27 are the spec's numbered ambiguities, listed with the alternatives and the reason \
         for each default in [docs/method.md](method.md#knob-index-a1a27); equations and \
         Algorithm 1 lines are the paper's, explained in the same document.\n",
    );
    let mut section = Some(String::new());
    for k in all() {
        let sec = k.key.split_once('.').map(|(s, _)| s.to_string());
        if sec != section {
            let title = match &sec {
                Some(s) => format!("`[{s}]`"),
                None => "Top level".to_string(),
            };
            s.push_str(&format!(
                "\n## {title}\n\n| key | type | default | allowed | belongs to | what it changes |\n\
                 |---|---|---|---|---|---|\n"
            ));
            section = sec;
        }
        let refs = if k.refs.is_empty() {
            "—".to_string()
        } else {
            k.refs.join(", ")
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            k.key,
            k.ty,
            k.default,
            k.allowed,
            refs,
            k.doc.replace('|', "\\|")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_from_doc_lines() {
        assert_eq!(
            references("A14(a): the Δ̄ gradient (Eq. 13, Alg. 1 line 19); see A15, TTQ."),
            vec!["A14", "Eq. 13", "Alg. 1 line 19", "A15", "TTQ"]
        );
        assert_eq!(
            references("A 4 Eq. x Alg. 2 liner A28"),
            Vec::<String>::new()
        );
        assert_eq!(
            references("(Table 4, the paper's section 3.3)"),
            vec!["Table 4", "§3.3"]
        );
        assert_eq!(ambiguity_number(&["Eq. 8".into(), "A2".into()]), 2);
    }

    #[test]
    fn every_section_and_kind_of_knob_is_found() {
        let all = all();
        let get = |key: &str| all.iter().find(|k| k.key == key).unwrap().clone();
        let seed = get("seed");
        assert_eq!(
            (seed.ty.as_str(), seed.default.as_str()),
            ("integer", "`0`")
        );
        assert_eq!(get("model.arch").default, "required");
        let scope = get("hla.threshold_scope");
        assert_eq!(scope.ty, "choice");
        assert_eq!(scope.allowed, "`global`, `per_layer`");
        assert_eq!(scope.default, "`\"global\"`");
        assert!(scope.refs.contains(&"A1".to_string()));
        assert_eq!(get("hla.lr").allowed, "0 < x <= 10");
        assert_eq!(get("hla.sgdr_t0_epochs_stage2").ty, "real (optional)");
        assert_eq!(get("data.batch_size").allowed, "1 <= x <= 1000000000000");
        assert_eq!(get("report.plots").allowed, "`true`, `false`");
    }
}
