//! Cross-module tests: shipped data, readers, torchvision golden values, loader determinism,
//! bad input. Tests use the workspace's `data/`; those needing `../shared/data` skip with a
//! printed reason when it is absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use ndarray::Array3;

use crate::testutil::{shared_or_skip, temp_dir};
use crate::transforms::{center_crop_offsets, resize_bilinear, resize_shorter_size, rgb_to_tensor};
use crate::*;

fn shipped(p: &str) -> PathBuf {
    shipped_data_dir().join(p)
}

fn bits(a: impl IntoIterator<Item = f32>) -> Vec<u32> {
    a.into_iter().map(f32::to_bits).collect()
}

// ---------------------------------------------------------------- CIFAR-10

#[test]
fn shipped_cifar10_subset_counts_and_histograms() {
    let c = Cifar10::load(shipped("cifar10")).unwrap();
    assert_eq!(c.train.len(), 5000);
    assert_eq!(c.train.histogram(), vec![500; 10]);
    assert_eq!(c.test.len(), 1000);
    assert_eq!(c.test.histogram(), vec![100; 10]);
    assert_eq!(c.test.images.dim(), (1000, 3, 32, 32));
    assert_eq!(c.train.classes[9], "truck");
}

/// Expected bytes read by an independent script (Python, offsets `r·3073 + 1 + c·1024 + y·32 + x`):
/// `b=open('data/cifar10/test_batch.bin','rb').read(); [b[r*3073+1+c*1024+y*32+x] for ...]`.
#[test]
fn cifar10_decoded_pixels_are_exact() {
    let t = Cifar10::load_test(shipped("cifar10")).unwrap();
    let px = |r: usize, c, y, x| t.images[[r, c, y, x]];
    assert_eq!(t.labels[0], 1);
    assert_eq!(
        [
            px(0, 0, 0, 0),
            px(0, 1, 5, 7),
            px(0, 2, 31, 31),
            px(0, 0, 16, 3)
        ],
        [114, 9, 94, 68]
    );
    assert_eq!(t.labels[999], 8);
    assert_eq!(
        [
            px(999, 0, 0, 0),
            px(999, 1, 5, 7),
            px(999, 2, 31, 31),
            px(999, 0, 16, 3)
        ],
        [121, 138, 54, 161]
    );
}

/// The shipped test records whose source JPEG is also in `data/cifar10-jpeg/val` must show the
/// same picture: this checks the R, G, B plane layout and the labels against independently
/// decoded files. The `.bin` pixels were decoded by Pillow (libjpeg-turbo) and ours by the
/// `image` crate, so a grey level or two of difference is the decoders', not the layout's
/// (a plane or axis mix-up gives differences of tens to hundreds).
#[test]
fn cifar10_records_match_their_source_jpegs() {
    let t = Cifar10::load_test(shipped("cifar10")).unwrap();
    let order = std::fs::read_to_string(shipped("cifar10/order-test.txt")).unwrap();
    let mut matched = 0;
    let mut worst = 0i32;
    for line in order.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (r, label, src) = (
            f[0].parse::<usize>().unwrap(),
            f[1].parse::<usize>().unwrap(),
            f[2],
        );
        let jpg = shipped("cifar10-jpeg/val").join(src.trim_start_matches("test/"));
        if !jpg.is_file() {
            continue;
        }
        matched += 1;
        assert_eq!(t.labels[r], label, "{line}");
        assert_eq!(CIFAR10_CLASSES[label], src.split('/').nth(1).unwrap());
        let img = load_rgb(&jpg).unwrap();
        assert_eq!(img.dimensions(), (32, 32));
        let mut sum = 0i64;
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                let d = (p[c] as i32 - t.images[[r, c, y as usize, x as usize]] as i32).abs();
                worst = worst.max(d);
                sum += d as i64;
            }
        }
        let mean = sum as f64 / 3072.0;
        assert!(
            mean < 1.0,
            "{}: mean |diff| {mean} vs record {r}",
            jpg.display()
        );
    }
    assert!(
        matched >= 5,
        "only {matched} shipped records have their JPEG shipped"
    );
    assert!(worst <= 8, "worst pixel difference {worst}");
    eprintln!("{matched} records checked against their JPEGs, worst |diff| {worst}");
}

#[test]
fn shared_cifar10_counts_and_histograms() {
    let Some(d) = shared_or_skip("shared_cifar10_counts_and_histograms") else {
        return;
    };
    let c = Cifar10::load(d.join("cifar10")).unwrap();
    assert_eq!(c.test.len(), 10_000);
    assert_eq!(c.test.histogram(), vec![1000; 10]);
    assert_eq!(c.train.len(), 50_000);
    assert_eq!(c.train.histogram(), vec![5000; 10]);
    // Per-batch counts published in shared/data/README.md.
    let b1 = read_cifar10_bin(&d.join("cifar10/cifar-10-batches-bin/data_batch_1.bin")).unwrap();
    assert_eq!(
        b1.histogram(),
        [1004, 989, 984, 1034, 957, 1055, 1003, 1025, 976, 973]
    );
    // The shipped test subset is the first 100 records of each class, in file order.
    let sub = Cifar10::load_test(shipped("cifar10")).unwrap();
    let mut seen = [0usize; 10];
    let mut k = 0;
    for r in 0..c.test.len() {
        let l = c.test.labels[r];
        if seen[l] < 100 {
            seen[l] += 1;
            assert_eq!(sub.labels[k], l);
            assert_eq!(
                sub.images.index_axis(ndarray::Axis(0), k),
                c.test.images.index_axis(ndarray::Axis(0), r)
            );
            k += 1;
        }
    }
    assert_eq!(k, 1000);
}

#[test]
fn cifar10_eval_batches_are_normalised_bytes_in_index_order() {
    let c = Cifar10::load(shipped("cifar10")).unwrap();
    let raw = c.test.clone();
    let (_, test) = c.into_datasets(Normalize::imagenet()).unwrap();
    let cfg = LoaderConfig {
        batch_size: 7,
        shuffle: false,
        prefetch: 0,
        ..Default::default()
    };
    let l = Loader::new(Arc::new(test), cfg).unwrap();
    let b = l.epoch(0).nth(2).unwrap().unwrap();
    assert_eq!(b.indices, (14..21).collect::<Vec<_>>());
    assert_eq!(b.labels, raw.labels[14..21]);
    for ((n, ch, y, x), &v) in b.images.indexed_iter() {
        let byte = raw.images[[14 + n, ch, y, x]] as f32;
        let e = (byte / 255.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
        assert_eq!(v.to_bits(), e.to_bits(), "({n},{ch},{y},{x})");
    }
}

/// The golden ResNet-20 predictions file (written by `shared/golden/make_golden.py` with numpy
/// reading `test_batch.bin`) stores every record's label: our reader must agree on all 10,000.
#[test]
fn shared_cifar10_labels_match_golden_file() {
    let Some(d) = shared_or_skip("shared_cifar10_labels_match_golden_file") else {
        return;
    };
    let bytes =
        std::fs::read(d.join("../golden/resnet20_cifar10_test_predictions.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("label").unwrap();
    assert_eq!(t.shape(), [10_000]);
    let golden: Vec<usize> = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let test = Cifar10::load_test(d.join("cifar10")).unwrap();
    assert_eq!(test.labels, golden);
}

#[test]
fn cifar10_bad_files_are_typed_errors_naming_the_file() {
    let d = temp_dir("cifar-bad");
    let p = d.join("data_batch_1.bin");
    std::fs::write(&p, vec![0u8; 3073 * 2 + 5]).unwrap();
    let e = read_cifar10_bin(&p).unwrap_err();
    assert!(matches!(e, DataError::BadCifar { .. }), "{e}");
    assert!(
        e.to_string().contains("data_batch_1.bin") && e.to_string().contains("6151"),
        "{e}"
    );
    let mut rec = vec![0u8; 3073];
    rec[0] = 10;
    std::fs::write(&p, &rec).unwrap();
    assert!(matches!(
        read_cifar10_bin(&p),
        Err(DataError::BadCifar { .. })
    ));
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        read_cifar10_bin(&p),
        Err(DataError::BadCifar { .. })
    ));
    // Missing test_batch.bin and missing folder.
    std::fs::write(&p, vec![3u8; 3073]).unwrap();
    let e = Cifar10::load(&d).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    let e = Cifar10::load(d.join("nope")).unwrap_err();
    assert!(
        matches!(e, DataError::Io { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- MNIST

fn idx_images(n: u32, r: u32, c: u32, extra: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, r, c] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..(n * r * c) as usize + extra).map(|i| (i % 251) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

#[test]
fn mnist_reads_raw_and_gz_and_rejects_bad_headers() {
    let d = temp_dir("mnist");
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    std::fs::write(
        d.join("train-images-idx3-ubyte.gz"),
        gz(&idx_images(3, 28, 28, 0)),
    )
    .unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), idx_labels(&[5, 0, 4])).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(2, 28, 28, 0)).unwrap();
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gz(&idx_labels(&[7, 2])),
    )
    .unwrap();
    let m = Mnist::load(&d).unwrap();
    assert_eq!(m.train.images.dim(), (3, 1, 28, 28));
    assert_eq!(m.train.labels, [5, 0, 4]);
    assert_eq!(m.train.images[[1, 0, 0, 0]], (784 % 251) as u8);
    assert_eq!(m.test.labels, [7, 2]);
    // Size disagreeing with the header.
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(2, 28, 28, 1)).unwrap();
    let e = Mnist::load(&d).unwrap_err();
    assert!(
        matches!(e, DataError::BadIdx { .. }) && e.to_string().contains("t10k-images"),
        "{e}"
    );
    // A header whose pixel count wraps around u64 to the file's (here 0) is an error, not a
    // panic: 2^31 · 2^31 · 4 = 2^64.
    let mut crafted = vec![0, 0, 8, 3];
    for v in [1u32 << 31, 1 << 31, 4] {
        crafted.extend(v.to_be_bytes());
    }
    let e = crate::mnist::parse_idx_images(&crafted, Path::new("crafted-idx3")).unwrap_err();
    assert!(e.to_string().contains("more than can be addressed"), "{e}");
    // Wrong magic (a label file where images are expected).
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_labels(&[1, 2])).unwrap();
    assert!(matches!(Mnist::load(&d), Err(DataError::BadIdx { .. })));
    // Count mismatch between images and labels.
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(3, 28, 28, 0)).unwrap();
    let e = Mnist::load(&d).unwrap_err();
    assert!(e.to_string().contains("t10k-labels"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn shared_mnist_counts_and_first_labels() {
    let Some(d) = shared_or_skip("shared_mnist_counts_and_first_labels") else {
        return;
    };
    let m = Mnist::load(d.join("mnist")).unwrap();
    // Published counts (shared/data/README.md).
    assert_eq!(
        m.train.histogram(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        m.test.histogram(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(m.train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(m.test.labels[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
}

// ---------------------------------------------------------------- ImageFolder

#[test]
fn shipped_imagefolders_have_expected_classes_and_counts() {
    let opts = ImageFolderOptions {
        class_index: Some(shipped("imagenette/classes.tsv")),
        ..Default::default()
    };
    let f = ImageFolder::open(shipped("imagenette/val"), &opts).unwrap();
    assert_eq!(f.num_classes(), 1000);
    assert_eq!(f.len(), 10);
    // The Imagenette classes' standard ImageNet-1k indices.
    let labels: Vec<usize> = (0..f.len()).map(|i| f.label(i)).collect();
    assert_eq!(labels, [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]);
    assert_eq!(
        (
            f.classes()[217].wnid.as_str(),
            f.classes()[217].name.as_str()
        ),
        ("n02102040", "English Springer Spaniel")
    );
    assert_eq!(f.histogram().iter().sum::<usize>(), 10);

    let c = ImageFolder::open(shipped("cifar10-jpeg/val"), &ImageFolderOptions::default()).unwrap();
    assert_eq!(c.len(), 200);
    assert_eq!(c.histogram(), vec![20; 10]);
    let names: Vec<&str> = c.classes().iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, CIFAR10_CLASSES);
    let t = ImageFolder::open(
        shipped("cifar10-jpeg/train"),
        &ImageFolderOptions::default(),
    )
    .unwrap();
    assert_eq!(t.len(), 500);
    assert_eq!(t.histogram(), vec![50; 10]);
}

#[test]
fn shared_imagenet_sample_counts_and_index_file() {
    let Some(d) = shared_or_skip("shared_imagenet_sample_counts_and_index_file") else {
        return;
    };
    let root = d.join("imagenet-sample/val");
    let plain = ImageFolder::open(&root, &ImageFolderOptions::default()).unwrap();
    let opts = ImageFolderOptions {
        class_index: Some(d.join("imagenet-sample/classes.tsv")),
        ..Default::default()
    };
    let indexed = ImageFolder::open(&root, &opts).unwrap();
    assert_eq!(plain.len(), 1000);
    assert_eq!(plain.histogram(), vec![1; 1000]);
    assert_eq!(indexed.histogram(), vec![1; 1000]);
    // Sorted-folder indices equal the official indices (wnids are sorted).
    for i in 0..1000 {
        assert_eq!(plain.label(i), indexed.label(i));
    }
    assert_eq!(indexed.classes()[0].wnid, "n01440764");
}

#[test]
fn imagefolder_bad_roots_are_typed_errors() {
    let d = temp_dir("folder-roots");
    let e = ImageFolder::open(d.join("missing"), &ImageFolderOptions::default()).unwrap_err();
    assert!(
        matches!(e, DataError::Io { .. }) && e.to_string().contains("missing"),
        "{e}"
    );
    let e = ImageFolder::open(&d, &ImageFolderOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::NoClasses { .. }), "{e}");
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::write(d.join("a/x.jpg"), b"not really").unwrap();
    std::fs::write(d.join("a/notes.txt"), b"ignored").unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    let e = ImageFolder::open(&d, &ImageFolderOptions::default()).unwrap_err();
    assert!(
        matches!(e, DataError::EmptyClass { .. }) && e.to_string().contains("/b"),
        "{e}"
    );
    let skip = ImageFolderOptions {
        on_error: ErrorPolicy::Skip,
        ..Default::default()
    };
    let f = ImageFolder::open(&d, &skip).unwrap();
    assert_eq!((f.len(), f.num_classes(), f.warnings().len()), (1, 2, 1));
    // A class folder missing from the index file.
    std::fs::write(d.join("idx.tsv"), "index\twnid\tname\n0\ta\tA\n").unwrap();
    let o = ImageFolderOptions {
        class_index: Some(d.join("idx.tsv")),
        on_error: ErrorPolicy::Skip,
        ..Default::default()
    };
    assert!(matches!(
        ImageFolder::open(&d, &o),
        Err(DataError::UnknownClass { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- bad images

fn read_expected(d: &Path) -> Vec<Vec<String>> {
    let t = std::fs::read_to_string(d.join("bad-images/expected.tsv")).unwrap();
    t.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn shared_bad_images_decode_as_expected() {
    let Some(d) = shared_or_skip("shared_bad_images_decode_as_expected") else {
        return;
    };
    let rows = read_expected(&d);
    assert_eq!(rows.len(), 12);
    let base = load_rgb(&d.join("bad-images/ok-baseline-rgb.JPEG")).unwrap();
    for r in &rows {
        let p = d.join("bad-images").join(&r[0]);
        let got = load_rgb(&p);
        if r[2] == "yes" {
            let img = got.unwrap_or_else(|e| panic!("{}: {e}", r[0]));
            let (w, h): (u32, u32) = (r[4].parse().unwrap(), r[5].parse().unwrap());
            assert_eq!(img.dimensions(), (w, h), "{}", r[0]); // EXIF orientation ignored
        } else {
            let e = got.expect_err(&r[0]);
            assert!(
                e.to_string().contains(&r[0]),
                "error does not name the file: {e}"
            );
            let kind_ok = match r[0].as_str() {
                "truncated.JPEG" => matches!(e, DataError::Truncated { .. }),
                _ => matches!(e, DataError::NotAnImage { .. }),
            };
            assert!(kind_ok, "{}: {e:?}", r[0]);
        }
    }
    // CMYK converted to RGB stays close to the RGB original (expected.tsv: ~2/255 mean).
    let cmyk = load_rgb(&d.join("bad-images/cmyk.JPEG")).unwrap();
    let mad: f64 = cmyk
        .as_raw()
        .iter()
        .zip(base.as_raw())
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum::<f64>()
        / base.as_raw().len() as f64;
    assert!(mad < 3.0, "cmyk mean |diff| {mad}");
    let gray = load_rgb(&d.join("bad-images/grayscale.JPEG")).unwrap();
    assert!(gray.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    let tiny = load_rgb(&d.join("bad-images/tiny-1x1.JPEG")).unwrap();
    let p = tiny.get_pixel(0, 0);
    assert!(
        (p[0] as i32 - 200).abs() <= 8
            && (p[1] as i32 - 30).abs() <= 8
            && (p[2] as i32 - 40).abs() <= 8,
        "{p:?}"
    );
}

/// Builds `root/good/*` (shipped JPEGs) and `root/bad/*` (an empty file, a text file, a
/// truncated JPEG, and with ../shared every file of bad-images) and returns the number of
/// files that must fail.
fn bad_folder(root: &Path) -> usize {
    std::fs::create_dir_all(root.join("good")).unwrap();
    std::fs::create_dir_all(root.join("bad")).unwrap();
    let src = shipped("cifar10-jpeg/val/cat");
    for i in 0..4 {
        let n = format!("{i:04}.jpg");
        std::fs::copy(src.join(&n), root.join("good").join(&n)).unwrap();
    }
    let jpeg = std::fs::read(src.join("0000.jpg")).unwrap();
    std::fs::write(root.join("bad/cut.jpg"), &jpeg[..jpeg.len() * 6 / 10]).unwrap();
    std::fs::write(root.join("bad/empty.jpg"), b"").unwrap();
    std::fs::write(root.join("bad/text.jpg"), b"this is not an image\n").unwrap();
    let mut failing = 3;
    if let Some(d) = shared_or_skip("the ../shared bad-images in the error-policy tests") {
        for r in read_expected(&d) {
            std::fs::copy(
                d.join("bad-images").join(&r[0]),
                root.join("bad").join(&r[0]),
            )
            .unwrap();
            failing += usize::from(r[2] == "no");
        }
    }
    failing
}

#[test]
fn loader_error_policy_stops_or_skips_bad_files() {
    let d = temp_dir("bad-loader");
    let failing = bad_folder(&d);
    let opts = ImageFolderOptions {
        transform: ImageTransform::eval(40, 32),
        ..Default::default()
    };
    let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(&d, &opts).unwrap());
    let total = ds.len();
    let cfg = LoaderConfig {
        batch_size: 5,
        threads: 2,
        shuffle: false,
        ..Default::default()
    };
    let l = Loader::new(ds.clone(), cfg.clone()).unwrap();
    let err = l
        .epoch(0)
        .find_map(|b| b.err())
        .expect("a bad file must stop the epoch");
    assert!(err.to_string().contains("/bad/"), "{err}");
    let l = Loader::new(
        ds,
        LoaderConfig {
            on_error: ErrorPolicy::Skip,
            ..cfg
        },
    )
    .unwrap();
    let mut n = 0;
    let mut reasons = Vec::new();
    for b in l.epoch(0) {
        let b = b.unwrap();
        assert_eq!(b.images.dim().0, b.labels.len());
        assert!(b.images.iter().all(|v| v.is_finite()));
        assert_eq!(b.skip_reasons.len(), b.skipped);
        n += b.labels.len();
        reasons.extend(b.skip_reasons);
    }
    assert_eq!(l.skipped(), failing);
    assert_eq!(reasons.len(), failing);
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("sample ") && r.contains("/bad/")),
        "{reasons:?}"
    );
    assert_eq!(n, total - failing);
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- torchvision golden values

struct Golden {
    name: String,
    shape: [usize; 3],
    values: Vec<u32>,
    fnv: Option<u64>,
}

fn golden() -> Vec<Golden> {
    let text = include_str!("../tests/golden_transforms.txt");
    let mut out: Vec<Golden> = Vec::new();
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let hex = |s: &str| {
            s.split(' ')
                .map(|h| u32::from_str_radix(h, 16).unwrap())
                .collect::<Vec<_>>()
        };
        match key {
            "case" => out.push(Golden {
                name: rest.to_string(),
                shape: [0; 3],
                values: vec![],
                fnv: None,
            }),
            "shape" => {
                let v: Vec<usize> = rest.split(' ').map(|s| s.parse().unwrap()).collect();
                out.last_mut().unwrap().shape = [v[0], v[1], v[2]];
            }
            "fnv1a64" => out.last_mut().unwrap().fnv = Some(u64::from_str_radix(rest, 16).unwrap()),
            "row0" => out.last_mut().unwrap().values = hex(rest),
            "decode" => {} // see `jpeg_decoder_agrees_with_pillow`
            _ => out.last_mut().unwrap().values = hex(line),
        }
    }
    out
}

/// The synthetic image of `tests/golden_transforms.py` (`synth()`).
fn synth() -> RgbImage {
    RgbImage::from_fn(53, 41, |x, y| {
        image::Rgb([
            ((x * 7 + y * 3) % 256) as u8,
            ((x * x + y * 5 + 11) % 256) as u8,
            (((x ^ y) * 9 + 50) % 256) as u8,
        ])
    })
}

fn fnv1a64(b: &[u8]) -> u64 {
    b.iter().fold(0xCBF2_9CE4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// `Resize(size)` + `CenterCrop(crop)` through the public eval transform (deterministic).
fn eval_u8(img: &RgbImage, size: usize, crop: usize) -> (RgbImage, Array3<f32>) {
    let (rw, rh) = resize_shorter_size(img.width() as usize, img.height() as usize, size);
    let (top, left) = center_crop_offsets(rw, rh, crop, crop);
    let mut out = Array3::zeros((3, crop, crop));
    let mut rng = crate::seed::rng_for(0, Purpose::Augment, 0, 0);
    let lut = Normalize::imagenet().lut();
    ImageTransform::eval(size, crop)
        .apply(img, &mut rng, &lut, out.view_mut())
        .unwrap();
    // The u8 image, for the checksum: only defined when the crop lies inside.
    let u8img = if top >= 0 && left >= 0 {
        let win = CropBox {
            top: top as usize,
            left: left as usize,
            height: crop,
            width: crop,
        };
        resize_bilinear(
            img,
            CropBox::full(img.width() as usize, img.height() as usize),
            rw,
            rh,
            win,
        )
        .unwrap()
    } else {
        RgbImage::new(0, 0)
    };
    (u8img, out)
}

fn rrc_u8(img: &RgbImage, b: CropBox, size: usize, flip: bool) -> (RgbImage, Array3<f32>) {
    let r = resize_bilinear(img, b, size, size, CropBox::full(size, size)).unwrap();
    let mut out = Array3::zeros((3, size, size));
    rgb_to_tensor(&r, flip, &Normalize::imagenet().lut(), out.view_mut()).unwrap();
    (r, out)
}

fn box_(top: usize, left: usize, height: usize, width: usize) -> CropBox {
    CropBox {
        top,
        left,
        height,
        width,
    }
}

/// Values from torchvision 0.29.2 / Pillow 13.0.0, see `tests/golden_transforms.py`.
#[test]
fn torchvision_golden_synthetic_bit_exact() {
    let img = synth();
    let g = golden();
    let mut checked = 0;
    for case in g.iter().filter(|c| c.fnv.is_none()) {
        let out = match case.name.as_str() {
            "rrc_down" => rrc_u8(&img, box_(5, 9, 30, 37), 24, false).1,
            "rrc_up" => rrc_u8(&img, box_(3, 2, 11, 8), 20, false).1,
            "rrc_down_flip" => rrc_u8(&img, box_(5, 9, 30, 37), 24, true).1,
            "resize32_center24" => eval_u8(&img, 32, 24).1,
            "resize16_center20" => eval_u8(&img, 16, 20).1,
            "resize64_center33" => eval_u8(&img, 64, 33).1,
            other => panic!("golden case {other} has no Rust counterpart"),
        };
        assert_eq!(out.shape(), case.shape, "{}", case.name);
        let got = bits(out.iter().copied());
        for (i, (a, e)) in got.iter().zip(&case.values).enumerate() {
            assert_eq!(
                a,
                e,
                "{}: element {i}: {} vs torchvision {}",
                case.name,
                f32::from_bits(*a),
                f32::from_bits(*e)
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn torchvision_golden_real_png() {
    let Some(d) = shared_or_skip("torchvision_golden_real_png") else {
        return;
    };
    let img = load_rgb(&d.join("bad-images/png-disguised.JPEG")).unwrap();
    let g = golden();
    let mut checked = 0;
    for case in g.iter().filter(|c| c.fnv.is_some()) {
        let (u, t) = match case.name.as_str() {
            "png_eval_256_224" => eval_u8(&img, 256, 224),
            "png_rrc_224" => rrc_u8(&img, box_(20, 30, 120, 150), 224, false),
            other => panic!("golden case {other} has no Rust counterpart"),
        };
        assert_eq!(t.shape(), case.shape, "{}", case.name);
        assert_eq!(
            fnv1a64(u.as_raw()),
            case.fnv.unwrap(),
            "{}: uint8 image differs",
            case.name
        );
        let row0 = bits(t.slice(ndarray::s![0, 0, ..16]).iter().copied());
        assert_eq!(row0, case.values, "{}", case.name);
        checked += 1;
    }
    assert_eq!(checked, 2);
}

/// Our JPEG decode of the shipped camera JPEGs against Pillow's (`decode` lines of
/// `tests/golden_transforms.txt`): same size, and every 4×4-grid block mean per channel within
/// half a grey level. Different IDCT / chroma upsampling move single pixels by a few levels
/// but not block means; a wrong colour conversion or channel order moves them by tens.
#[test]
fn jpeg_decoder_agrees_with_pillow() {
    let text = include_str!("../tests/golden_transforms.txt");
    let mut n = 0;
    let mut worst = 0f64;
    for line in text.lines().filter(|l| l.starts_with("decode ")) {
        let f: Vec<&str> = line.split(' ').collect();
        let img = load_rgb(&shipped(f[1])).unwrap();
        let (w, h): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert_eq!(img.dimensions(), (w, h), "{}", f[1]);
        let (w, h) = (w as usize, h as usize);
        let expected: Vec<f64> = f[4..].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(expected.len(), 48);
        for by in 0..4 {
            for bx in 0..4 {
                let (y0, y1, x0, x1) = (h * by / 4, h * (by + 1) / 4, w * bx / 4, w * (bx + 1) / 4);
                for c in 0..3 {
                    let mut sum = 0u64;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum += img.get_pixel(x as u32, y as u32)[c] as u64;
                        }
                    }
                    let mean = sum as f64 / ((y1 - y0) * (x1 - x0)) as f64;
                    let d = (mean - expected[(by * 4 + bx) * 3 + c]).abs();
                    worst = worst.max(d);
                    assert!(
                        d < 0.5,
                        "{} block ({by},{bx}) channel {c}: {mean} vs Pillow {}",
                        f[1],
                        expected[(by * 4 + bx) * 3 + c]
                    );
                }
            }
        }
        n += 1;
    }
    assert_eq!(n, 10);
    eprintln!("worst block-mean difference to Pillow: {worst:.4}");
}

// ---------------------------------------------------------------- loader determinism

fn all_batches(l: &Loader, epoch: u64) -> Vec<(Vec<u32>, Vec<usize>, Vec<usize>)> {
    l.epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (bits(b.images.iter().copied()), b.labels, b.indices)
        })
        .collect()
}

fn cifar_train_subset(n: usize) -> Arc<dyn Dataset> {
    let mut set = Cifar10::load(shipped("cifar10")).unwrap().train;
    set.images = set.images.slice(ndarray::s![..n, .., .., ..]).to_owned();
    set.labels.truncate(n);
    Arc::new(
        set.into_dataset(PixelTransform::cifar_train(), Normalize::imagenet())
            .unwrap(),
    )
}

#[test]
fn cifar_batches_bit_identical_across_threads_and_prefetch() {
    let ds = cifar_train_subset(300);
    let base = LoaderConfig {
        batch_size: 64,
        seed: 17,
        threads: 1,
        prefetch: 0,
        ..Default::default()
    };
    let a = all_batches(&Loader::new(ds.clone(), base.clone()).unwrap(), 3);
    let b = all_batches(
        &Loader::new(
            ds.clone(),
            LoaderConfig {
                threads: 2,
                prefetch: 3,
                ..base.clone()
            },
        )
        .unwrap(),
        3,
    );
    assert_eq!(a.len(), 5); // 300 = 4 × 64 + 44
    assert_eq!(a[4].1.len(), 44);
    assert!(a == b, "1 thread and 2 threads + prefetch differ");
    // Augmentation is applied (a flip/crop changes pixels) and epochs differ in order.
    let c = all_batches(&Loader::new(ds.clone(), base.clone()).unwrap(), 4);
    assert_ne!(a[0].2, c[0].2);
    let mut idx: Vec<usize> = a.iter().flat_map(|x| x.2.clone()).collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..300).collect::<Vec<_>>());
    let dl = Loader::new(
        ds,
        LoaderConfig {
            drop_last: true,
            ..base
        },
    )
    .unwrap();
    assert_eq!((dl.batches_per_epoch(), dl.epoch(0).count()), (4, 4));
}

#[test]
fn imagefolder_batches_bit_identical_across_threads() {
    let opts = ImageFolderOptions {
        transform: ImageTransform::train(64),
        ..Default::default()
    };
    let ds: Arc<dyn Dataset> =
        Arc::new(ImageFolder::open(shipped("imagenette/val"), &opts).unwrap());
    let cfg = LoaderConfig {
        batch_size: 4,
        seed: 5,
        threads: 1,
        prefetch: 0,
        ..Default::default()
    };
    let a = all_batches(&Loader::new(ds.clone(), cfg.clone()).unwrap(), 1);
    let b = all_batches(
        &Loader::new(
            ds,
            LoaderConfig {
                threads: 2,
                prefetch: 1,
                ..cfg
            },
        )
        .unwrap(),
        1,
    );
    assert_eq!(a.len(), 3);
    assert!(a == b, "ImageFolder batches differ between 1 and 2 threads");
}

#[test]
fn resume_mid_epoch_gives_the_remaining_batches() {
    let ds = cifar_train_subset(200);
    let cfg = LoaderConfig {
        batch_size: 32,
        seed: 9,
        prefetch: 2,
        threads: 2,
        ..Default::default()
    };
    let l = Loader::new(ds, cfg).unwrap();
    let full = all_batches(&l, 2);
    let rest: Vec<_> = l
        .epoch_from(2, 4)
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            (bits(b.images.iter().copied()), b.labels, b.indices)
        })
        .collect();
    assert_eq!(rest.len(), full.len() - 4);
    assert!(rest[..] == full[4..]);
    assert!(l.epoch_from(2, full.len()).unwrap().next().is_none());
    assert!(matches!(
        l.epoch_from(2, full.len() + 1),
        Err(DataError::BadPosition { .. })
    ));
    // Dropping an iterator with a full prefetch queue must not hang.
    let mut it = l.epoch(0);
    let _ = it.next();
    drop(it);
}

#[test]
fn shards_partition_the_epoch() {
    let ds = cifar_train_subset(103);
    // 103 samples in batches of 40: 40, 40, 23. Three shards read 2, 2 and 1 chunks of 8 of a
    // full batch, and 8, 8, 7 samples of the last one; together, in rank order, every batch
    // of the single-process run, pixels included.
    let one = LoaderConfig {
        batch_size: 40,
        seed: 1,
        prefetch: 0,
        ..Default::default()
    };
    let whole: Vec<Batch> = Loader::new(ds.clone(), one.clone())
        .unwrap()
        .epoch(0)
        .map(|b| b.unwrap())
        .collect();
    let shards: Vec<Vec<Batch>> = (0..3)
        .map(|rank| {
            let cfg = LoaderConfig {
                shard: Shard { rank, world: 3 },
                ..one.clone()
            };
            let l = Loader::new(ds.clone(), cfg).unwrap();
            assert_eq!(l.batches_per_epoch(), 3);
            l.epoch(0).map(|b| b.unwrap()).collect()
        })
        .collect();
    let sizes: Vec<Vec<usize>> = shards
        .iter()
        .map(|s| s.iter().map(|b| b.labels.len()).collect())
        .collect();
    assert_eq!(sizes, vec![vec![16, 16, 8], vec![16, 16, 8], vec![8, 8, 7]]);
    for (pos, w) in whole.iter().enumerate() {
        let idx: Vec<usize> = shards.iter().flat_map(|s| s[pos].indices.clone()).collect();
        assert_eq!(idx, w.indices, "batch {pos}");
        let px: Vec<f32> = shards
            .iter()
            .flat_map(|s| s[pos].images.iter().copied().collect::<Vec<_>>())
            .collect();
        assert!(px
            .iter()
            .zip(w.images.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // Too few chunks for every shard: the last ones read none.
    assert_eq!(Shard { rank: 2, world: 4 }.rows(20), 16..20);
    assert_eq!(Shard { rank: 3, world: 4 }.rows(20), 20..20);
    let bad = LoaderConfig {
        shard: Shard { rank: 3, world: 3 },
        ..Default::default()
    };
    assert!(matches!(
        Loader::new(ds.clone(), bad),
        Err(DataError::BadOption { .. })
    ));
    let bad = LoaderConfig {
        batch_size: 0,
        ..Default::default()
    };
    assert!(matches!(
        Loader::new(ds.clone(), bad),
        Err(DataError::BadOption { .. })
    ));
    let l = Loader::new(ds, LoaderConfig::default()).unwrap();
    assert!(matches!(
        l.load_batch(0, &[5, 103]),
        Err(DataError::BadOption { .. })
    ));
}
