//! `docs/knobs.md` is generated from the config types; this test keeps it so. It fails when a
//! knob (or a choice of an enum knob) has no doc line, when a real-valued knob has no range in
//! its section's `NUMERIC` table, when a table names a field that does not exist, when
//! `validate` accepts a value outside a documented range, and when the file is stale
//! (`HLA_BLESS=1` rewrites it).

use hla_core::HlaConfig;
use hla_train::knobs;
use std::path::Path;

#[test]
fn every_knob_and_choice_has_a_doc_line() {
    let all = knobs::all();
    assert!(all.len() > 60, "only {} knobs found", all.len());
    for k in &all {
        assert!(!k.doc.is_empty(), "knob `{}` has no doc comment", k.key);
        assert!(
            k.undocumented_choices.is_empty(),
            "knob `{}`: choices {:?} have no doc comment",
            k.key,
            k.undocumented_choices
        );
        if k.ty.starts_with("real") {
            assert!(
                k.allowed.contains(" x "),
                "real knob `{}` has no range in its section's NUMERIC table",
                k.key
            );
        }
    }
    // Every method knob names the equation, line, ambiguity or baseline it belongs to.
    for k in all.iter().filter(|k| k.key.starts_with("hla.")) {
        assert!(
            !k.refs.is_empty(),
            "knob `{}` names no paper reference: {}",
            k.key,
            k.doc
        );
    }
}

#[test]
fn numeric_tables_name_real_fields_and_validate_enforces_them() {
    let all = knobs::all();
    let tables: [(&str, Vec<&str>); 5] = [
        (
            "model",
            hla_train::config::ModelConfig::NUMERIC
                .iter()
                .map(|k| k.name)
                .collect(),
        ),
        (
            "data",
            hla_train::config::DataConfig::NUMERIC
                .iter()
                .map(|k| k.name)
                .collect(),
        ),
        (
            "train",
            hla_train::config::TrainConfig::NUMERIC
                .iter()
                .map(|k| k.name)
                .collect(),
        ),
        (
            "quantize",
            hla_train::config::QuantizeConfig::NUMERIC
                .iter()
                .map(|k| k.name)
                .collect(),
        ),
        ("hla", HlaConfig::NUMERIC.iter().map(|k| k.name).collect()),
    ];
    for (section, names) in &tables {
        for n in names {
            let key = format!("{section}.{n}");
            assert!(
                all.iter().any(|k| k.key == key),
                "NUMERIC names `{key}`, no such field"
            );
        }
    }
    // Just past each upper bound (or at an open one) the `[hla]` validator names the knob.
    let base = serde_json::to_value(HlaConfig::default()).unwrap();
    for k in HlaConfig::NUMERIC {
        let d = k.domain;
        let v = if d.hi_open { d.hi } else { d.hi + 1.0 };
        let mut j = base.clone();
        j[k.name] = if base[k.name].is_u64() || base[k.name].is_null() && d.hi.fract() == 0.0 {
            serde_json::json!(v as u64)
        } else {
            serde_json::json!(v)
        };
        let c: HlaConfig = serde_json::from_value(j).unwrap();
        match c.validate() {
            Err(hla_core::HlaError::Config { knob, .. }) => assert_eq!(knob, k.name),
            other => panic!("{} = {v} accepted: {other:?}", k.name),
        }
        assert!(!d.contains(v) && d.contains(d.lo.max(if d.lo_open { d.lo + 1e-3 } else { d.lo })));
    }
}

#[test]
fn docs_knobs_md_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/knobs.md");
    let want = knobs::markdown();
    if std::env::var_os("HLA_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/knobs.md is stale: regenerate it with \
         `HLA_BLESS=1 cargo test --release -p hla-train --test knobs_doc`"
    );
}
