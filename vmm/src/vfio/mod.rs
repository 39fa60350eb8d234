//! VFIO device assignment (`-device vfio-pci,host=BDF[,id=ID][,iommufd=OBJ]`) over the
//! type1 container or iommufd, with raw ioctls so a new process image can adopt inherited
//! container, group, iommufd and device fds (live update, restart mode).

pub mod device;
pub mod ioctl;
pub mod iommufd;
pub mod iommufd_set;
pub mod model;
pub mod set;
pub mod state;
pub mod type1_set;

pub use model::{DeviceConfig, VfioPciModel};
pub use set::{VfioBackendState, VfioDeviceConfig, VfioSet, VfioSetError};
pub use state::VfioPciState;

#[cfg(test)]
mod iommufd_tests;
#[cfg(test)]
mod tests;
