//! ImageFolder: `root/<class>/**/<image>` with torchvision's conventions.
//!
//! Classes are the sub-folders of `root` sorted by name, indexed `0..` in that order, unless a
//! class-index file maps folder names (ImageNet wnids) to fixed indices, so a subset keeps the
//! 1000-class ImageNet indices. Files are found recursively (sorted walk, like torchvision's
//! `make_dataset`) and kept when their extension is `.jpg`, `.jpeg` or `.png` (any case); the
//! content decides the decoder, not the name (see [`crate::decode`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::ArrayViewMut3;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;
use crate::decode::load_rgb;
use crate::error::{DataError, Result};
use crate::transforms::{ImageTransform, Normalize};

/// What to do with a bad file or folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Stop with a typed error naming the file (the default).
    #[default]
    Error,
    /// Leave it out, count it and print one warning line to stderr.
    Skip,
}

/// One class: its index, folder name (wnid for ImageNet) and readable name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Label index.
    pub index: usize,
    /// Folder name (ImageNet wnid such as `n01440764`).
    pub wnid: String,
    /// Readable name (from the class-index file; the folder name otherwise).
    pub name: String,
}

/// Options of [`ImageFolder::open`].
#[derive(Clone, Debug)]
pub struct ImageFolderOptions {
    /// Optional class-index file: tab-separated `index  wnid  [name  ...]` lines (a header
    /// line is skipped), e.g. `shared/data/imagenet-sample/classes.tsv`; or one folder name per
    /// line, whose line order gives the index.
    pub class_index: Option<PathBuf>,
    /// Policy for an empty class folder (`Skip` keeps the class index but warns).
    pub on_error: ErrorPolicy,
    /// Per-image transform (default: `Resize(256)` + `CenterCrop(224)`).
    pub transform: ImageTransform,
    /// Normalisation (default: ImageNet mean/std).
    pub normalize: Normalize,
}

impl Default for ImageFolderOptions {
    fn default() -> Self {
        ImageFolderOptions {
            class_index: None,
            on_error: ErrorPolicy::Error,
            transform: ImageTransform::eval(256, 224),
            normalize: Normalize::imagenet(),
        }
    }
}

/// An ImageFolder data set (file list and labels; images are decoded on demand).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<ClassInfo>,
    samples: Vec<(PathBuf, usize)>,
    transform: ImageTransform,
    lut: Vec<[f32; 256]>,
    warnings: Vec<String>,
}

/// Whether `p` has an image extension we decode (case-insensitive).
fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// Recursive sorted walk collecting image files (torchvision `make_dataset` order: the files
/// of a folder, then its sub-folders in name order).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = sorted_entries(dir)?;
    for p in entries.iter().filter(|p| !p.is_dir()) {
        if is_image_name(p) {
            out.push(p.clone());
        }
    }
    for p in entries.iter().filter(|p| p.is_dir()) {
        walk(p, out)?;
    }
    Ok(())
}

/// Parses a class-index file into `ClassInfo`s sorted by index.
pub fn read_class_index(path: &Path) -> Result<Vec<ClassInfo>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut out: Vec<ClassInfo> = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |reason: String| DataError::BadClassIndex {
            path: path.to_path_buf(),
            line: ln + 1,
            reason,
        };
        let info = if f.len() == 1 {
            ClassInfo {
                index: out.len(),
                wnid: f[0].trim().to_string(),
                name: f[0].trim().to_string(),
            }
        } else {
            match f[0].trim().parse::<usize>() {
                Ok(index) => ClassInfo {
                    index,
                    wnid: f[1].trim().to_string(),
                    name: f
                        .get(2)
                        .unwrap_or(&f[1])
                        .trim()
                        .trim_matches('"')
                        .to_string(),
                },
                Err(_) if ln == 0 => continue, // header
                Err(_) => return Err(bad(format!("first field {:?} is not an index", f[0]))),
            }
        };
        if info.wnid.is_empty() {
            return Err(bad("empty class name".into()));
        }
        out.push(info);
    }
    out.sort_by_key(|c| c.index);
    for (i, w) in out.windows(2).enumerate() {
        if w[0].index == w[1].index {
            return Err(DataError::BadClassIndex {
                path: path.to_path_buf(),
                line: i + 2,
                reason: format!("index {} appears twice", w[0].index),
            });
        }
    }
    let mut seen = HashMap::new();
    for c in &out {
        if seen.insert(c.wnid.clone(), c.index).is_some() {
            return Err(DataError::BadClassIndex {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("class {:?} appears twice", c.wnid),
            });
        }
    }
    Ok(out)
}

impl ImageFolder {
    /// Scans `root` (no image is decoded here).
    ///
    /// # Errors
    /// `Io` for a missing or unreadable root; `NoClasses` when it has no sub-folder;
    /// `EmptyClass` for a class folder without image files (unless `on_error` is `Skip`);
    /// `UnknownClass` / `BadClassIndex` for class-index problems; `BadOption` for a bad
    /// transform or normalisation.
    pub fn open(root: impl AsRef<Path>, opts: &ImageFolderOptions) -> Result<ImageFolder> {
        let root = root.as_ref().to_path_buf();
        opts.transform.validate()?;
        if opts.normalize.channels() != 3 {
            return Err(DataError::BadOption {
                op: "ImageFolder::open",
                reason: format!(
                    "images are RGB, Normalize has {} channels",
                    opts.normalize.channels()
                ),
            });
        }
        let dirs: Vec<PathBuf> = sorted_entries(&root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if dirs.is_empty() {
            return Err(DataError::NoClasses { path: root });
        }
        let names: Vec<String> = dirs
            .iter()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let classes: Vec<ClassInfo> = match &opts.class_index {
            Some(f) => read_class_index(f)?,
            None => names
                .iter()
                .enumerate()
                .map(|(index, n)| ClassInfo {
                    index,
                    wnid: n.clone(),
                    name: n.clone(),
                })
                .collect(),
        };
        let by_name: HashMap<&str, usize> =
            classes.iter().map(|c| (c.wnid.as_str(), c.index)).collect();
        let mut samples = Vec::new();
        let mut warnings = Vec::new();
        for (dir, name) in dirs.iter().zip(&names) {
            let Some(&label) = by_name.get(name.as_str()) else {
                return Err(DataError::UnknownClass {
                    root: root.clone(),
                    class: name.clone(),
                    index_file: opts.class_index.clone().unwrap_or_default(),
                });
            };
            let mut files = Vec::new();
            walk(dir, &mut files)?;
            if files.is_empty() {
                let err = DataError::EmptyClass { path: dir.clone() };
                match opts.on_error {
                    ErrorPolicy::Error => return Err(err),
                    ErrorPolicy::Skip => warnings.push(err.to_string()),
                }
            }
            samples.extend(files.into_iter().map(|f| (f, label)));
        }
        // Labels must index `classes` densely for `num_classes`: with an index file the
        // largest index decides, so give every missing index a placeholder.
        let n_classes = classes.iter().map(|c| c.index + 1).max().unwrap_or(0);
        let mut dense: Vec<ClassInfo> = (0..n_classes)
            .map(|index| ClassInfo {
                index,
                wnid: String::new(),
                name: String::new(),
            })
            .collect();
        for c in classes {
            let i = c.index;
            dense[i] = c;
        }
        Ok(ImageFolder {
            root,
            classes: dense,
            samples,
            transform: opts.transform.clone(),
            lut: opts.normalize.lut(),
            warnings,
        })
    }

    /// Replaces the transform and normalisation (e.g. a train and an eval view of one scan).
    ///
    /// # Errors
    /// `BadOption` for an invalid transform or a non-3-channel normalisation.
    pub fn with_transform(
        mut self,
        transform: ImageTransform,
        normalize: Normalize,
    ) -> Result<Self> {
        transform.validate()?;
        if normalize.channels() != 3 {
            return Err(DataError::BadOption {
                op: "ImageFolder::with_transform",
                reason: format!(
                    "images are RGB, Normalize has {} channels",
                    normalize.channels()
                ),
            });
        }
        self.transform = transform;
        self.lut = normalize.lut();
        Ok(self)
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every class, index order (`classes()[i].index == i`).
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// `(file, label)` of every sample, in index order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// Samples per class, `[num_classes]`.
    pub fn histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.classes.len()];
        for (_, l) in &self.samples {
            h[*l] += 1;
        }
        h
    }

    /// Warnings from the scan (skipped empty class folders).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The transform in use.
    pub fn transform(&self) -> &ImageTransform {
        &self.transform
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn label(&self, index: usize) -> usize {
        self.samples[index].1
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.transform.output_shape()
    }
    fn load(&self, index: usize, rng: &mut ChaCha8Rng, out: ArrayViewMut3<f32>) -> Result<()> {
        let img = load_rgb(&self.samples[index].0)?;
        self.transform.apply(&img, rng, &self.lut, out)
    }
    fn describe(&self, index: usize) -> String {
        self.samples[index].0.display().to_string()
    }
}
