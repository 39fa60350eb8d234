//! VFIO device assignment (`-device vfio-pci,host=BDF[,id=ID]`) over the type1 container,
//! with raw ioctls so a new process image can adopt inherited container, group and device
//! fds (live update, restart mode).

pub mod device;
pub mod ioctl;
pub mod model;
pub mod set;
pub mod state;

pub use model::{DeviceConfig, VfioPciModel};
pub use set::{VfioDeviceConfig, VfioSet, VfioSetError};
pub use state::VfioPciState;

#[cfg(test)]
mod tests;
