//! Seeded mutators: byte-level (bit flips, interesting integers, truncation, deletion,
//! duplication, insertion), safetensors-header-aware (shapes with huge, zero or wrapping
//! dimensions, wrong dtypes, overlapping or out-of-range offsets, missing or duplicated
//! tensors, crafted metadata) and text-aware (TOML lines and numbers). Every mutation is a
//! pure function of the input and the generator, so a finding is replayed from its seed.

use rand::{Rng, RngCore};
use serde_json::{json, Map, Value};

/// How an input is structured, which decides the mutations tried on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Opaque bytes (CIFAR, IDX, JPEG, PNG).
    Binary,
    /// A safetensors file: 8-byte header length, JSON header, data.
    Safetensors,
    /// UTF-8 text (TOML configs).
    Text,
}

/// Integers that break size arithmetic: zero, one, powers of two at the type edges, and a
/// pair whose product wraps around u64 to −1.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    255,
    65_535,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    (1 << 32) + 1,
    1 << 63,
    u64::MAX,
    u64::MAX / 3,
];

fn pick<T: Copy>(rng: &mut impl RngCore, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// One to four byte-level edits of `input`.
pub fn mutate_bytes(input: &[u8], rng: &mut impl RngCore) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let n = b.len();
        match rng.random_range(0..9) {
            0 if n > 0 => {
                let i = rng.random_range(0..n);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if n > 0 => {
                let i = rng.random_range(0..n);
                b[i] = pick(rng, &[0u8, 1, 0x7F, 0x80, 0xFF]);
            }
            2 if n >= 8 => {
                let i = rng.random_range(0..=n - 8);
                let v = pick(rng, &INTERESTING);
                let bytes = if rng.random_bool(0.5) {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let w = pick(rng, &[2usize, 4, 8]);
                b[i..i + w].copy_from_slice(&bytes[..w]);
            }
            3 => b.truncate(rng.random_range(0..=n)),
            4 if n > 0 => {
                let i = rng.random_range(0..n);
                let j = rng.random_range(i..=n.min(i + 1 + n / 8));
                b.drain(i..j);
            }
            5 if n > 0 => {
                let i = rng.random_range(0..n);
                let j = rng.random_range(i..=n.min(i + 64));
                let chunk = b[i..j].to_vec();
                let at = rng.random_range(0..=b.len());
                b.splice(at..at, chunk);
            }
            6 => {
                let at = rng.random_range(0..=n);
                let extra: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
                b.splice(at..at, extra);
            }
            7 => b.extend((0..rng.random_range(1..256)).map(|_| rng.random::<u8>())),
            _ if n > 0 => {
                // A run of one byte value (fills, zeroed regions).
                let i = rng.random_range(0..n);
                let j = rng.random_range(i..=n.min(i + 32));
                let v = rng.random();
                b[i..j].iter_mut().for_each(|x| *x = v);
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

/// Splits a safetensors file into its JSON header and data, if it is one.
fn split_safetensors(b: &[u8]) -> Option<(Map<String, Value>, &[u8])> {
    let len = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let header = b.get(8..8usize.checked_add(len)?)?;
    let v: Value = serde_json::from_slice(header).ok()?;
    Some((v.as_object()?.clone(), &b[8 + len..]))
}

/// Reassembles a safetensors file (header padded to a multiple of 8 with spaces).
fn join_safetensors(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).expect("a JSON map serialises");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// One structural edit of a safetensors header (tensor shapes, dtypes, offsets, entries,
/// metadata), the data left as is; falls back to byte edits for anything else.
pub fn mutate_safetensors(input: &[u8], rng: &mut impl RngCore) -> Vec<u8> {
    let Some((mut header, data)) = split_safetensors(input) else {
        return mutate_bytes(input, rng);
    };
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let data_len = data.len() as u64;
    let op = rng.random_range(0..9);
    if op == 8 || names.is_empty() {
        // Metadata: crafted shape strings, mangled JSON state, removed keys.
        if let Some(Value::Object(md)) = header.get_mut("__metadata__") {
            let keys: Vec<String> = md.keys().cloned().collect();
            if !keys.is_empty() {
                let k = keys[rng.random_range(0..keys.len())].clone();
                let crafted = [
                    String::new(),
                    "0".into(),
                    "2,4294967297,4294967295,4294967297,4294967295,4".into(),
                    "18446744073709551615,2".into(),
                    "-1,3".into(),
                    "{}".into(),
                    "not json".into(),
                ];
                match rng.random_range(0..3) {
                    0 => {
                        md.remove(&k);
                    }
                    1 => {
                        md.insert(k, json!(crafted[rng.random_range(0..crafted.len())]));
                    }
                    _ => {
                        // Edit inside the value's text (e.g. a number in the JSON run state).
                        let v = md[&k].as_str().unwrap_or("").to_string();
                        let m = mutate_text(&v, rng);
                        md.insert(k, json!(m));
                    }
                }
            }
        }
        return join_safetensors(&header, data);
    }
    let name = names[rng.random_range(0..names.len())].clone();
    let entry = header[&name].clone();
    match op {
        0 | 1 => {
            // A shape dimension: huge, zero, wrapping, or one more / fewer dimension.
            let mut e = entry;
            if let Some(Value::Array(shape)) = e.get_mut("shape") {
                match rng.random_range(0..4) {
                    0 if !shape.is_empty() => {
                        let i = rng.random_range(0..shape.len());
                        shape[i] = json!(pick(rng, &INTERESTING));
                    }
                    1 => shape.push(json!(pick(rng, &INTERESTING))),
                    2 if !shape.is_empty() => {
                        shape.pop();
                    }
                    _ => {
                        // Dimensions whose product wraps around u64 to the true count.
                        let (a, b) = ((1u64 << 32) + 1, (1u64 << 32) - 1);
                        shape.extend([json!(a), json!(b), json!(a), json!(b)]);
                    }
                }
            }
            header.insert(name, e);
        }
        2 => {
            let mut e = entry;
            let dt = pick(
                rng,
                &[
                    "F32", "F64", "F16", "I64", "I32", "U8", "BOOL", "BF16", "Q4",
                ],
            );
            e["dtype"] = json!(dt);
            header.insert(name, e);
        }
        3 | 4 => {
            // Offsets: out of range, reversed, overlapping another tensor, huge.
            let mut e = entry;
            let (s, t) = match rng.random_range(0..4) {
                0 => (0, data_len + 1),
                1 => (data_len / 2 + 1, data_len / 2),
                2 => (0, data_len / 2),
                _ => (pick(rng, &INTERESTING), pick(rng, &INTERESTING)),
            };
            e["data_offsets"] = json!([s, t]);
            header.insert(name, e);
        }
        5 => {
            header.remove(&name);
        }
        6 => {
            header.insert(format!("{name}.copy"), entry);
        }
        _ => {
            // Rename: the reader sees a tensor it does not expect and misses one it does.
            header.remove(&name);
            header.insert(format!("{name}_renamed"), entry);
        }
    }
    join_safetensors(&header, data)
}

/// One edit of a text input: a line deleted or duplicated, a number replaced by an extreme
/// value, a string emptied, a character inserted, or the text cut.
pub fn mutate_text(input: &str, rng: &mut impl RngCore) -> String {
    let mut lines: Vec<String> = input.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let i = rng.random_range(0..lines.len());
    match rng.random_range(0..7) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        2 => {
            let extreme = pick(
                rng,
                &[
                    "-1",
                    "0",
                    "1e308",
                    "-1e308",
                    "nan",
                    "inf",
                    "18446744073709551616",
                    "9223372036854775807",
                    "0.0000001",
                    "\"\"",
                    "[]",
                    "{}",
                ],
            );
            let l = &lines[i];
            let replaced = match l.find(|c: char| c.is_ascii_digit()) {
                Some(s) => {
                    let e = l[s..]
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                        .map_or(l.len(), |e| s + e);
                    format!("{}{extreme}{}", &l[..s], &l[e..])
                }
                None => match l.split_once('=') {
                    Some((k, _)) => format!("{k}= {extreme}"),
                    None => l.clone(),
                },
            };
            lines[i] = replaced;
        }
        3 => {
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= \"\"");
            }
        }
        4 => {
            let c = pick(rng, &['[', ']', '"', '=', '\0', '\u{FFFD}', '#', '\n', '.']);
            let l = &mut lines[i];
            let at = l
                .char_indices()
                .map(|(k, _)| k)
                .nth(rng.random_range(0..=l.chars().count()))
                .unwrap_or(l.len());
            l.insert(at, c);
        }
        5 => {
            let pos = rng.random_range(0..lines.len());
            lines.truncate(pos);
        }
        _ => lines.push(
            pick(
                rng,
                &[
                    "[hla]",
                    "[data]",
                    "x = 1",
                    "hla.lr = 5",
                    "[model]\narch = \"nope\"",
                ],
            )
            .to_string(),
        ),
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// One mutation of `input` suited to its `kind` (structured edits most of the time, plain
/// byte edits otherwise, so both the format's checks and its framing are exercised).
pub fn mutate(input: &[u8], kind: Kind, rng: &mut impl RngCore) -> Vec<u8> {
    match kind {
        Kind::Binary => mutate_bytes(input, rng),
        Kind::Safetensors if rng.random_bool(0.6) => mutate_safetensors(input, rng),
        Kind::Text if rng.random_bool(0.8) => match std::str::from_utf8(input) {
            Ok(s) => mutate_text(s, rng).into_bytes(),
            Err(_) => mutate_bytes(input, rng),
        },
        _ => mutate_bytes(input, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn safetensors_mutations_keep_the_framing_and_change_the_header() {
        let mut header = Map::new();
        header.insert(
            "w".into(),
            json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}),
        );
        let file = join_safetensors(&header, &[0u8; 16]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut changed = 0;
        for _ in 0..200 {
            let m = mutate_safetensors(&file, &mut rng);
            let (h, data) = split_safetensors(&m).expect("still framed as safetensors");
            assert_eq!(data.len(), 16);
            changed += usize::from(h != header);
        }
        assert!(changed > 150, "{changed} of 200 changed the header");
    }

    #[test]
    fn mutations_are_a_function_of_the_seed() {
        let input = b"[hla]\nlr = 0.01\nt_step_pct = 4\n";
        let run = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| mutate(input, Kind::Text, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
