//! Data loading for hla: CIFAR-10 and MNIST binary readers, an ImageFolder JPEG loader with
//! torchvision-style transforms, and deterministic parallel batching.
