//! The VFIO steps of a transfer (`transfer.rs`), both sides. Container and groups (or the
//! iommufd) and devices go at hello with the `vfio.container` (`vfio.iommufd`) section,
//! after the old process has released the DMA mappings' host addresses (type1); the
//! successor takes the mappings over while the guest runs (type1 `MAP_DMA(VADDR)`, iommufd
//! `IOMMU_IOAS_CHANGE_PROCESS`). The interrupt eventfds go with the state (the guest may
//! reprogram its vectors until it pauses); the successor attaches irqfds only after `go`.
//! See docs/VFIO.md.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use cpr_format::{FdEntry, Image};

use super::{fds, CprError, Vm};
use crate::machine::{Machine, MachineError};
use crate::vfio::set::{ms, trace, vmlck, vmpin, AdoptedContainer};
use crate::vfio::{VfioSet, VfioSetError};

use super::transfer::TransferError;

fn vfio_err(e: VfioSetError) -> CprError {
    CprError::Machine(MachineError::Vfio(e))
}

/// Interrupt eventfds of assigned devices (`vfio-irq-ID-...`).
fn is_irq(e: &FdEntry) -> bool {
    e.name.starts_with("vfio-irq-")
}

/// Old process: the VFIO fds hello carries (container, groups, devices).
pub(super) fn hello_fds(m: &Machine) -> Result<Vec<FdEntry>, CprError> {
    let all = fds::vfio_manifest(m.vfio())?;
    Ok(all.into_iter().filter(|e| !is_irq(e)).collect())
}

/// Old process: the interrupt eventfds the state message carries, in this order.
pub(super) fn state_fds(m: &Machine) -> Result<Vec<FdEntry>, CprError> {
    let all = fds::vfio_manifest(m.vfio())?;
    Ok(all.into_iter().filter(is_irq).collect())
}

/// Old process, just before hello: let the successor take the DMA mappings (type1:
/// invalidate this process's host addresses so it can map its own; iommufd: nothing to
/// invalidate, it takes them with IOMMU_IOAS_CHANGE_PROCESS). Device DMA goes on into the
/// pinned pages.
pub(super) fn release(m: &mut Machine) -> Result<(), CprError> {
    if let Some(v) = m.vfio_mut() {
        let t0 = std::time::Instant::now();
        v.release_dma().map_err(vfio_err)?;
        if v.is_iommufd() {
            trace(format_args!(
                "cpr-transfer: iommufd file mappings left for the successor to take (guest running); VmPin of pid {} {}",
                std::process::id(),
                vmpin()
            ));
        } else {
            trace(format_args!(
                "cpr-transfer: DMA vaddr released by pid {} in {:.3} ms (guest running); VmLck {}",
                std::process::id(),
                ms(t0),
                vmlck()
            ));
        }
    }
    Ok(())
}

/// Old process, at the pause: interrupts latch in the eventfds from here.
pub(super) fn detach(m: &mut Machine) -> Result<(), CprError> {
    match m.vfio_mut() {
        Some(v) => v.detach_irqfds().map_err(vfio_err),
        None => Ok(()),
    }
}

/// Old process, the transfer failed before `go`: DMA mappings back at this process's
/// addresses (taken from the successor if it had mapped them), irqfds attached.
pub(super) fn cancel(m: &mut Machine) -> Result<(), CprError> {
    match m.vfio_mut() {
        Some(v) => v.cancel_update().map_err(vfio_err),
        None => Ok(()),
    }
}

/// Old process, for the trace: where the pinned-page accounting stands (type1 charges
/// the mappings' owner's VmLck, iommufd its VmPin).
pub(super) fn trace_locked(m: &Machine, when: &str) {
    if let Some(v) = m.vfio() {
        let (what, kb) = if v.is_iommufd() {
            ("VmPin", vmpin())
        } else {
            ("VmLck", vmlck())
        };
        trace(format_args!(
            "cpr-transfer: {when}; {what} of pid {} now {kb}",
            std::process::id(),
        ));
    }
}

/// Successor, building its VM (guest running in the old process): takes the container
/// and groups and maps every DMA mapping at this process's address of the same pages. It
/// also maps each device's BARs in its VM from the preview of the device state hello
/// carries (no device write, no interrupt touched).
pub(super) fn take_over(handed: &Image, vm: &mut Vm) -> Result<(), CprError> {
    let preview = super::image::vfio_state(handed)?;
    let (Some((cs, devices)), Vm::Incoming(inc)) = (preview, vm) else {
        return Ok(());
    };
    let machine = inc.machine.as_ref().ok_or(CprError::NotIncoming)?;
    let t0 = std::time::Instant::now();
    let fds = &mut inc.vfio_fds;
    let mut taken = VfioSet::adopt(
        &cs,
        &mut |n| fds.remove(n),
        machine.ram(),
        machine.gsi_router().vm(),
    )
    .map_err(vfio_err)?;
    trace(format_args!(
        "cpr-transfer: {} DMA mappings taken over by pid {} in {:.3} ms, before the pause",
        cs.mappings().len(),
        std::process::id(),
        ms(t0)
    ));
    let t1 = std::time::Instant::now();
    taken
        .prepare_devices(&cs, &devices, machine.gsi_router())
        .map_err(vfio_err)?;
    trace(format_args!(
        "cpr-transfer: BARs of {} devices mapped in this VM in {:.3} ms, before the pause",
        devices.len(),
        ms(t1)
    ));
    inc.vfio_adopted = Some(Box::new(taken));
    Ok(())
}

/// Successor, in the pause: the devices of the state image over the container taken at
/// hello, with the interrupt eventfds `received` on the state message (in the order of
/// the image's fd manifest, each checked against its identity). Irqfds stay detached.
pub(super) fn restore(
    img: &Image,
    received: Vec<OwnedFd>,
    mut vfio_fds: BTreeMap<String, OwnedFd>,
    taken: Option<Box<AdoptedContainer>>,
    machine: &mut Machine,
) -> Result<(), CprError> {
    let Some((container, devices)) = super::image::vfio_state(img)? else {
        return Ok(());
    };
    let taken = taken.ok_or(TransferError::BadState(
        "VFIO devices, but hello carried no VFIO container",
    ))?;
    let entries = img.fd_manifest();
    if entries.len() != received.len() {
        return Err(TransferError::BadState(
            "the descriptor count differs from the state image's fd manifest",
        )
        .into());
    }
    for (e, fd) in entries.iter().zip(received) {
        let mine = FdEntry {
            fd: fd.as_raw_fd(),
            ..e.clone()
        };
        fds::verify_inherited(&mine)?;
        vfio_fds.insert(e.name.clone(), fd);
    }
    machine.restore_vfio_adopted(*taken, &container, &devices, &mut |n| vfio_fds.remove(n))?;
    Ok(())
}

/// Successor, after `go`: the guest is ours; KVM injects what the eventfds latched during
/// the pause, once. There is no going back past `go`: a failure is reported, not returned.
pub(super) fn attach_after_go(m: &mut Machine) {
    if let Some(v) = m.vfio_mut() {
        let t0 = std::time::Instant::now();
        match v.attach_irqfds() {
            Ok(()) => trace(format_args!(
                "cpr-transfer: irqfds attached after go in {:.3} ms",
                ms(t0)
            )),
            Err(e) => eprintln!("vmm: {}", crate::error_chain(&e)),
        }
    }
}
