//! Models for hla: a small `Module` abstraction with torchvision parameter names, CIFAR ResNets,
//! ResNet-18/34/50 and MobileNetV2, and safetensors state-dict I/O.
