//! Models for hla: a small module abstraction with torchvision parameter names, CIFAR ResNets,
//! ResNet-18/34/50 and MobileNetV2, and safetensors state-dict I/O.
//!
//! Every model implements [`Model`]: a forward pass recorded on an autograd [`Tape`] with an
//! explicit [`Mode`], its parameters and buffers under their PyTorch `state_dict` names in
//! `state_dict` order, and the list of layers a quantiser may take over through a [`LayerHook`].
//!
//! [`Tape`]: hla_autograd::Tape
#![warn(missing_docs)]

pub mod error;
pub mod init;
pub mod io;
pub mod layers;
pub mod mobilenet_v2;
pub mod model;
pub mod resnet;
pub mod resnet_cifar;
mod shortcut_a;

pub use error::{ModelError, Result};
pub use io::{
    load_safetensors, load_safetensors_report, read_tensors, save_safetensors, LoadReport, Tensor,
};
pub use mobilenet_v2::MobileNetV2;
pub use model::{
    BufferMut, BufferRef, LayerHook, LayerKind, Mode, Model, QuantLayerInfo, StateMut, StateRef,
};
pub use resnet::{BlockKind, ResNet};
pub use resnet_cifar::{CifarResNet, ShortcutKind};

/// Architecture names accepted by [`build`]. CIFAR ResNets use the option-A shortcut; append
/// `_b` (e.g. `resnet20_b`) for option B (1×1 conv + BN projection).
pub const ARCHS: &[&str] = &[
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenet_v2",
];

/// Builds an architecture by name with `num_classes` outputs, weights drawn from `seed`
/// (`ChaCha8Rng`, torchvision / akamaster initialisation).
///
/// # Errors
/// `UnknownArch` for a name not in [`ARCHS`] (or its `_b` CIFAR variant), `BadConfig` for
/// `num_classes == 0`.
pub fn build(arch: &str, num_classes: usize, seed: u64) -> Result<Box<dyn Model>> {
    let (base, shortcut) = match arch.strip_suffix("_b") {
        Some(b) => (b, ShortcutKind::B),
        None => (arch, ShortcutKind::A),
    };
    let cifar = |n| -> Result<Box<dyn Model>> {
        Ok(Box::new(CifarResNet::new(
            arch,
            n,
            num_classes,
            shortcut,
            seed,
        )?))
    };
    let tv = |k, l| -> Result<Box<dyn Model>> {
        Ok(Box::new(ResNet::new(arch, k, l, num_classes, seed)?))
    };
    let is_b = shortcut == ShortcutKind::B;
    match base {
        "resnet20" => cifar(3),
        "resnet32" => cifar(5),
        "resnet44" => cifar(7),
        "resnet56" => cifar(9),
        "resnet110" => cifar(18),
        "resnet18" if !is_b => tv(BlockKind::Basic, [2, 2, 2, 2]),
        "resnet34" if !is_b => tv(BlockKind::Basic, [3, 4, 6, 3]),
        "resnet50" if !is_b => tv(BlockKind::Bottleneck, [3, 4, 6, 3]),
        "resnet101" if !is_b => tv(BlockKind::Bottleneck, [3, 4, 23, 3]),
        "resnet152" if !is_b => tv(BlockKind::Bottleneck, [3, 8, 36, 3]),
        "mobilenet_v2" if !is_b => Ok(Box::new(MobileNetV2::new(arch, num_classes, seed)?)),
        _ => Err(ModelError::UnknownArch {
            arch: arch.into(),
            known: ARCHS.join(", "),
        }),
    }
}

#[cfg(test)]
mod parity;
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn names(m: &dyn Model) -> Vec<String> {
        m.state().into_iter().map(|(n, _)| n).collect()
    }

    /// Parameter counts: torchvision's `sum(p.numel() for p in model.parameters())` for
    /// ResNet-18/34/50 and MobileNetV2 (1000 classes), akamaster's table for the CIFAR ResNets
    /// (10 classes; ResNet-20 269,722 as in the golden README).
    #[test]
    fn parameter_counts_equal_the_reference_implementations() {
        let cases: &[(&str, usize, usize)] = &[
            ("resnet20", 10, 269_722),
            ("resnet32", 10, 464_154),
            ("resnet44", 10, 658_586),
            ("resnet56", 10, 853_018),
            ("resnet110", 10, 1_727_962),
            ("resnet18", 1000, 11_689_512),
            ("resnet34", 1000, 21_797_672),
            ("resnet50", 1000, 25_557_032),
            ("mobilenet_v2", 1000, 3_504_872),
        ];
        for &(arch, classes, want) in cases {
            let m = build(arch, classes, 0).unwrap();
            assert_eq!(m.num_params(), want, "{arch}");
            assert_eq!(m.arch(), arch);
            assert_eq!(m.num_classes(), classes);
        }
    }

    #[test]
    fn state_dict_sizes_and_names_follow_torchvision() {
        // (arch, state_dict entries incl. num_batches_tracked, names that must be present)
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "resnet20",
                116,
                &[
                    "conv1.weight",
                    "layer3.2.bn2.running_var",
                    "linear.bias",
                    "layer2.0.conv1.weight",
                ],
            ),
            (
                "resnet18",
                122,
                &[
                    "layer2.0.downsample.0.weight",
                    "layer2.0.downsample.1.num_batches_tracked",
                    "fc.weight",
                ],
            ),
            (
                "resnet50",
                320,
                &[
                    "layer1.0.conv3.weight",
                    "layer4.2.bn3.bias",
                    "layer1.0.downsample.1.running_mean",
                ],
            ),
            (
                "mobilenet_v2",
                314,
                &[
                    "features.0.0.weight",
                    "features.1.conv.0.0.weight",
                    "features.1.conv.1.weight",
                    "features.1.conv.2.running_var",
                    "features.3.conv.1.0.weight",
                    "features.17.conv.3.bias",
                    "features.18.1.running_mean",
                    "classifier.1.weight",
                ],
            ),
        ];
        for &(arch, n, must) in cases {
            let m = build(arch, 1000, 0).unwrap();
            let ns = names(m.as_ref());
            assert_eq!(ns.len(), n, "{arch}");
            let set: BTreeSet<_> = ns.iter().cloned().collect();
            assert_eq!(set.len(), ns.len(), "{arch}: duplicate names");
            for name in must {
                assert!(set.contains(*name), "{arch}: {name} missing");
            }
        }
        // state_dict order: module's params, then its buffers, then children in order
        let m = build("resnet18", 1000, 0).unwrap();
        let ns = names(m.as_ref());
        assert_eq!(
            &ns[..7],
            [
                "conv1.weight",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
                "bn1.num_batches_tracked",
                "layer1.0.conv1.weight"
            ]
        );
        assert_eq!(ns.last().unwrap(), "fc.bias");
        let ds = ns
            .iter()
            .position(|n| n == "layer2.0.downsample.0.weight")
            .unwrap();
        assert_eq!(ns[ds - 1], "layer2.0.bn2.num_batches_tracked");
    }

    #[test]
    fn quantisable_layers_exclude_first_conv_and_resnet_head() {
        let m = build("resnet20", 10, 0).unwrap();
        let q = m.quantisable();
        assert_eq!(q.len(), 18);
        assert_eq!(q[0].layer, "layer1.0.conv1");
        assert_eq!(q[0].weight, "layer1.0.conv1.weight");
        assert!(q
            .iter()
            .all(|l| l.kind == LayerKind::Conv && l.followed_by_bn));
        assert!(!q.iter().any(|l| l.layer == "conv1" || l.layer == "linear"));

        let m = build("resnet20_b", 10, 0).unwrap();
        assert_eq!(m.quantisable().len(), 20); // + two projection shortcuts
        assert!(m
            .state()
            .iter()
            .any(|(n, _)| n == "layer2.0.shortcut.0.weight"));

        let m = build("resnet18", 1000, 0).unwrap();
        let q = m.quantisable();
        assert_eq!(q.len(), 19); // 20 convs − conv1; fc excluded
        assert!(q.iter().any(|l| l.layer == "layer3.0.downsample.0"));

        let m = build("mobilenet_v2", 1000, 0).unwrap();
        let q = m.quantisable();
        assert_eq!(q.len(), 52); // 52 convs − features.0.0 + classifier.1
        assert_eq!(q[0].layer, "features.1.conv.0.0");
        let last = q.last().unwrap();
        assert_eq!(
            (last.layer.as_str(), last.kind, last.followed_by_bn),
            ("classifier.1", LayerKind::Linear, false)
        );
        // every quantisable weight is a parameter of the model
        let params: BTreeSet<String> = m.params().into_iter().map(|(n, _)| n).collect();
        assert!(q.iter().all(|l| params.contains(&l.weight)));
    }

    #[test]
    fn init_is_seeded_and_follows_torchvision() {
        let a = build("resnet18", 10, 7).unwrap();
        let b = build("resnet18", 10, 7).unwrap();
        let c = build("resnet18", 10, 8).unwrap();
        let (pa, pb, pc) = (a.params(), b.params(), c.params());
        for ((n, x), (_, y)) in pa.iter().zip(&pb) {
            assert_eq!(x.value(), y.value(), "{n}");
        }
        assert_ne!(pa[0].1.value(), pc[0].1.value());
        for (n, p) in &pa {
            if n.contains("bn") || n.contains("downsample.1") {
                let want = if n.ends_with("weight") { 1.0 } else { 0.0 };
                assert!(p.value().iter().all(|&v| v == want), "{n}");
            }
        }
        // conv1: N(0, 2 / fan_out), fan_out = 64·7·7
        let w = pa[0].1.value();
        let var = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var * 64.0 * 49.0 / 2.0 - 1.0).abs() < 0.1, "{var}");
        // fc: U(±1/√512)
        let fc = &pa.iter().find(|(n, _)| n == "fc.weight").unwrap().1;
        assert!(fc.value().iter().all(|&v| v.abs() <= 1.0 / 512f32.sqrt()));
    }

    #[test]
    fn unknown_arch_and_zero_classes_are_errors() {
        assert!(matches!(
            build("resnet19", 10, 0),
            Err(ModelError::UnknownArch { .. })
        ));
        assert!(matches!(
            build("resnet18_b", 10, 0),
            Err(ModelError::UnknownArch { .. })
        ));
        assert!(matches!(
            build("resnet20", 0, 0),
            Err(ModelError::BadConfig { .. })
        ));
    }
}
