//! The vmm crate as a library: the machine (KVM VM, vCPUs, devices, state save/restore), for
//! the `vmm` binary's front end, examples and integration tests.

pub mod machine;
pub mod pci;
pub mod teardown;
pub mod vfio;
