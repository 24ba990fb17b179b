//! Builds the small data shipped in the workspace's `data/` folder from the reference data in
//! `shared/data` (see `data/README.md`):
//!
//! - `data/cifar10/data_batch_1.bin`: the first 500 records of each class of
//!   `data_batch_1.bin` … `data_batch_5.bin` read in file order (5,000 records, file order kept);
//! - `data/cifar10/test_batch.bin`: the first 100 records of each class of `test_batch.bin`
//!   (1,000 records); plus `batches.meta.txt`, and `order-train.txt` / `order-test.txt` giving
//!   `<record> <label> <source JPEG>` for every record (from the shared `order-*.txt`);
//! - `data/imagenette/val/<wnid>/*.JPEG`: copies of `imagenet-sample/original` (10 unmodified
//!   camera JPEGs) and `data/imagenette/classes.tsv` (the 1000-class index);
//! - `data/cifar10-jpeg/{train,val}/<class>/*.jpg`: copies of `cifar10-jpeg` (500 + 200 JPEGs).
//!
//! Usage: `cargo run -p hla-data --example make_data_subset -- [SHARED_DATA_DIR [OUT_DIR]]`
//! (defaults: `../shared/data` next to the workspace, and the workspace's `data/`).
//! Deterministic: running it again gives byte-identical files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const RECORD: usize = 3073;

/// Keeps the first `per_class` records of each label, in file order. Returns the records'
/// bytes and their indices in the concatenated input.
fn first_per_class(files: &[PathBuf], per_class: usize) -> io::Result<(Vec<u8>, Vec<usize>)> {
    let mut counts = [0usize; 10];
    let (mut out, mut kept) = (Vec::new(), Vec::new());
    let mut global = 0;
    for f in files {
        let bytes = fs::read(f)?;
        assert_eq!(
            bytes.len() % RECORD,
            0,
            "{}: not whole CIFAR-10 records",
            f.display()
        );
        for rec in bytes.chunks_exact(RECORD) {
            let l = rec[0] as usize;
            if counts[l] < per_class {
                counts[l] += 1;
                out.extend_from_slice(rec);
                kept.push(global);
            }
            global += 1;
        }
    }
    assert!(
        counts.iter().all(|&c| c == per_class),
        "not enough records per class: {counts:?}"
    );
    Ok((out, kept))
}

/// Writes `<new index> <label> <source>` lines for the kept records.
fn write_order(src: &Path, kept: &[usize], dst: &Path) -> io::Result<()> {
    let text = fs::read_to_string(src)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (new, &old) in kept.iter().enumerate() {
        let mut f = lines[old].split(' ');
        let (idx, label, file) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        assert_eq!(
            idx.parse::<usize>().unwrap(),
            old,
            "{}: line {old} out of order",
            src.display()
        );
        out.push_str(&format!("{new} {label} {file}\n"));
    }
    fs::write(dst, out)
}

/// Copies a folder tree (files in sorted order; only regular files).
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    let mut entries: Vec<_> = fs::read_dir(src)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &dst.join(e.file_name()))?;
        } else {
            fs::copy(&p, dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("../shared/data"));
    let out = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("data"));

    let bins = shared.join("cifar10/cifar-10-batches-bin");
    let cdst = out.join("cifar10");
    fs::create_dir_all(&cdst)?;
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| bins.join(format!("data_batch_{i}.bin")))
        .collect();
    let (train, kept_train) = first_per_class(&train_files, 500)?;
    fs::write(cdst.join("data_batch_1.bin"), &train)?;
    write_order(
        &shared.join("cifar10/order-train.txt"),
        &kept_train,
        &cdst.join("order-train.txt"),
    )?;
    let (test, kept_test) = first_per_class(&[bins.join("test_batch.bin")], 100)?;
    fs::write(cdst.join("test_batch.bin"), &test)?;
    write_order(
        &shared.join("cifar10/order-test.txt"),
        &kept_test,
        &cdst.join("order-test.txt"),
    )?;
    fs::copy(bins.join("batches.meta.txt"), cdst.join("batches.meta.txt"))?;

    copy_tree(
        &shared.join("imagenet-sample/original"),
        &out.join("imagenette/val"),
    )?;
    fs::copy(
        shared.join("imagenet-sample/classes.tsv"),
        out.join("imagenette/classes.tsv"),
    )?;
    for split in ["train", "val"] {
        let sub = format!("cifar10-jpeg/{split}");
        copy_tree(&shared.join(&sub), &out.join(&sub))?;
    }
    println!(
        "wrote {} train + {} test CIFAR-10 records and the ImageFolder samples to {}",
        kept_train.len(),
        kept_test.len(),
        out.display()
    );
    Ok(())
}
