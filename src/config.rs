//! Config files: reading the TOML, applying `--set key=value` overrides, and naming the source
//! of a bad value in one line — the file and line it was written on, or the `--set` that gave
//! it. The schema and its validation (one `validate` per section) live in `hla_train::config`.

pub use hla_train::config::*;
use hla_train::RangeError;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected. Every variant names where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", .path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, wrong type or out-of-range value written in the file.
    #[error("{}: {location}{message}", .path.display())]
    File {
        /// The config file.
        path: PathBuf,
        /// "line L: " prefix (empty when the line is unknown).
        location: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A `--set key=value` override is malformed, or gives a bad value.
    #[error("--set {spec}: {message}")]
    Override {
        /// The override as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads, parses (with `--set` overrides applied) and validates `path`.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_toml_str(&text, path, overrides)
}

/// Parses `text` (`path` only names the source in errors), applies `overrides`, validates.
pub fn from_toml_str(text: &str, path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let location = e
            .span()
            .map(|s| format!("line {}: ", line_of_offset(text, s.start)))
            .unwrap_or_default();
        ConfigError::File {
            path: path.to_path_buf(),
            location,
            message: e.message().trim().replace('\n', " "),
        }
    })?;
    let mut set = Vec::new();
    for spec in overrides {
        set.push((apply_override(&mut table, spec)?, spec.clone()));
    }
    let src = Sources { text, path, set };
    let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string().trim().replace('\n', " ");
        let key = (key != "." && !key.is_empty()).then_some(key);
        src.error(key.as_deref(), &message)
    })?;
    cfg.validate()
        .map_err(|e: RangeError| src.error(Some(&e.key), &e.to_string()))?;
    Ok(cfg)
}

/// Where the values of a config came from.
struct Sources<'a> {
    text: &'a str,
    path: &'a Path,
    /// (dotted key, the `--set` spec as given), in command-line order.
    set: Vec<(String, String)>,
}

impl Sources<'_> {
    /// The error for `message` about `key`: the last `--set` that wrote the key (or a table
    /// containing it), else the file line where the key is written.
    fn error(&self, key: Option<&str>, message: &str) -> ConfigError {
        let named = |m: &str| match key {
            Some(k) if !m.contains(&format!("`{k}`")) => format!("key `{k}`: {m}"),
            _ => m.to_string(),
        };
        if let Some(k) = key {
            let hit = self.set.iter().rev().find(|(s, _)| {
                s == k || k.starts_with(&format!("{s}.")) || s.starts_with(&format!("{k}."))
            });
            if let Some((_, spec)) = hit {
                return ConfigError::Override {
                    spec: spec.clone(),
                    message: named(message),
                };
            }
        }
        let location = key
            .and_then(|k| line_of_key(self.text, k))
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        ConfigError::File {
            path: self.path.to_path_buf(),
            location,
            message: named(message),
        }
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The 1-based line on which dotted `key` is assigned (`[table]` headers followed by
/// `name = value`, or a dotted `a.b = value`), or of its table header when the key is a table.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(h) = line.strip_prefix('[') {
            table = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string();
            if table == key {
                return Some(i + 1);
            }
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k: String = k
            .split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".");
        let full = if table.is_empty() {
            k
        } else {
            format!("{table}.{k}")
        };
        if full == key || key.starts_with(&format!("{full}.")) {
            return Some(i + 1);
        }
    }
    None
}

/// Applies `a.b.c=value` to the table and returns the dotted key; `value` is parsed as a TOML
/// value, or taken as a string if it does not parse (so `--set data.root=/x/y` works without
/// quotes).
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<String, ConfigError> {
    let err = |message: &str| ConfigError::Override {
        spec: spec.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE, e.g. hla.lambda_d=0"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("empty key"));
    }
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{p}` is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
arch = "resnet20"
num_classes = 10
[data]
format = "cifar10"
root = "data/cifar10"
"#;

    fn parse(text: &str, set: &[&str]) -> Result<Config, ConfigError> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        from_toml_str(text, Path::new("x.toml"), &set)
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        parse(text, &[])
    }

    #[test]
    fn minimal_config_gets_the_spec_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(
            c.hla.threshold_scope,
            hla_core::config::ThresholdScope::Global
        );
        assert_eq!(c.hla.stage2_init_pct, 80);
        assert_eq!(c.hla.lambda_d, 1.0);
        assert_eq!(c.hla.lr, 0.01);
        assert_eq!(c.hla.sgdr_t0_epochs, 10.0);
        assert_eq!(c.train.schedule, Schedule::Cosine);
        assert_eq!(
            c.stage1_schedule(),
            vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]
        );
        assert_eq!(c.baseline_epochs(), 200.0);
    }

    #[test]
    fn include_end_adds_the_last_stage() {
        let c = parse(MINIMAL, &["hla.t_include_end=true"]).unwrap();
        assert_eq!(c.stage1_schedule().last(), Some(&70));
        assert_eq!(c.stage1_schedule().len(), 11);
    }

    #[test]
    fn unknown_key_names_the_table_the_key_and_the_line() {
        let e = load(&format!("{MINIMAL}\n[hla]\nlamda_d = 1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `hla.lamda_d`") && e.contains("unknown field"),
            "{e}"
        );
        assert!(e.starts_with("x.toml: line 10: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_variant_name_the_key_and_its_line() {
        let e = load(&format!("{MINIMAL}\n[hla]\nstage2_init_pct = \"eighty\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hla.stage2_init_pct"), "{e}");
        assert!(e.contains("line 10"), "{e}");
        let e = load(&format!(
            "{MINIMAL}\n[hla]\nthreshold_scope = \"galactic\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hla.threshold_scope") && e.contains("per_layer"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_names_key_range_and_line() {
        let e = load(&format!("{MINIMAL}\n[hla]\nt_start_pct = 120\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hla.t_start_pct")
                && e.contains("120")
                && e.contains("(allowed: 1 <= x <= 99)"),
            "{e}"
        );
        assert!(e.contains("x.toml: line 10:"), "{e}");
        let e = load(&format!("{MINIMAL}\n[hla]\nlr = -1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hla.lr"), "{e}");
        let e = load("[model]\narch = \"resnet20\"\nnum_classes = 1\n[data]\nformat = \"cifar10\"\nroot = \"d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("model.num_classes"),
            "{e}"
        );
    }

    /// A bad value given on the command line is reported as that `--set`, not as a line of the
    /// file (whose line numbers it never had).
    #[test]
    fn bad_override_names_the_set_not_the_file() {
        let e = parse(MINIMAL, &["data.batch_size=abc"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--set data.batch_size=abc: "), "{e}");
        assert!(e.contains("data.batch_size") && !e.contains("line"), "{e}");
        let e = parse(MINIMAL, &["hla.lambda_d=-1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--set hla.lambda_d=-1: ") && e.contains("out of range"),
            "{e}"
        );
        let e = parse(MINIMAL, &["hla.lamda_d=1"]).unwrap_err().to_string();
        assert!(
            e.starts_with("--set hla.lamda_d=1: ") && e.contains("unknown field"),
            "{e}"
        );
        // the same key bad in the file but fixed on the command line is fine
        let c = parse(
            &format!("{MINIMAL}\n[hla]\nlambda_d = -1.0\n"),
            &["hla.lambda_d=0.5"],
        )
        .unwrap();
        assert_eq!(c.hla.lambda_d, 0.5);
    }

    #[test]
    fn override_changes_a_knob_and_is_validated() {
        let c = parse(MINIMAL, &["hla.lambda_d=0"]).unwrap();
        assert_eq!(c.hla.lambda_d, 0.0);
        let e = parse(MINIMAL, &["hla.lambda_d"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let c = parse(MINIMAL, &["data.root=/somewhere/else"]).unwrap();
        assert_eq!(c.data.root, PathBuf::from("/somewhere/else"));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = load("name = \"a\"\n[model\n").unwrap_err().to_string();
        assert!(e.starts_with("x.toml: line 2: "), "{e}");
    }

    #[test]
    fn resolved_config_round_trips_and_digest_is_stable() {
        let c = load(MINIMAL).unwrap();
        let again = load(&c.to_toml()).unwrap();
        assert_eq!(c.to_toml(), again.to_toml());
        assert_eq!(c.digest(), again.digest());
        let mut d = c.clone();
        d.hla.lambda_d = 0.5;
        assert_ne!(c.digest(), d.digest());
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        let mut n = 0;
        for sub in ["configs", "configs/study"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(sub);
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                let plan = p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("study-"));
                if p.extension().and_then(|e| e.to_str()) == Some("toml") && !plan {
                    load_file(&p).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 6, "expected the paper, demo and study configs");
    }

    fn load_file(p: &Path) -> Result<Config, ConfigError> {
        super::load(p, &[])
    }
}
