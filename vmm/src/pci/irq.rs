//! KVM GSI routing for MSI. KVM_SET_GSI_ROUTING replaces the whole table, including the
//! default routes of the in-kernel PIC and IOAPIC, so the router always writes those first
//! (KVM's own defaults: GSI 0–15 to both PIC pins and IOAPIC pins, 16–23 to the IOAPIC) and
//! the MSI routes after them, from GSI 24 up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use super::msi::MsiMessage;

/// First GSI handed out for MSI routes (above the 24 IOAPIC pins).
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM's routing table limit on x86 (KVM_MAX_IRQ_ROUTES is 4096).
const MAX_GSI: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("no free GSI for an MSI route (all {MAX_GSI} in use)")]
    NoGsi,
    #[error("cannot build the GSI routing table of {entries} entries")]
    Table { entries: usize },
    #[error("KVM_SET_GSI_ROUTING with {entries} entries failed")]
    SetRouting {
        entries: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
}

struct Routes {
    msi: BTreeMap<u32, MsiMessage>,
    allocated: Vec<u32>,
}

/// The VM's GSI routing table; shared by every device that routes MSIs.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routes for the in-kernel irqchip (arch/x86/kvm/irq_comm.c).
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..16 {
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        v.push(irqchip(gsi, chip, pin));
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for gsi in 16..24 {
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> GsiRouter {
        GsiRouter {
            vm,
            routes: Mutex::new(Routes {
                msi: BTreeMap::new(),
                allocated: Vec::new(),
            }),
        }
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Reserves a GSI for an MSI route (no route yet).
    pub fn allocate(&self) -> Result<u32, IrqError> {
        let mut r = super::lock(&self.routes);
        let gsi = (FIRST_MSI_GSI..MAX_GSI)
            .find(|g| !r.allocated.contains(g))
            .ok_or(IrqError::NoGsi)?;
        r.allocated.push(gsi);
        Ok(gsi)
    }

    /// Reserves a specific GSI (restore: routes keep their numbers across a live update).
    pub fn claim(&self, gsi: u32) {
        let mut r = super::lock(&self.routes);
        if !r.allocated.contains(&gsi) {
            r.allocated.push(gsi);
        }
    }

    /// Whether a device holds `gsi` (claimed or allocated).
    pub fn claimed(&self, gsi: u32) -> bool {
        super::lock(&self.routes).allocated.contains(&gsi)
    }

    pub fn release(&self, gsi: u32) {
        let mut r = super::lock(&self.routes);
        r.allocated.retain(|g| *g != gsi);
        r.msi.remove(&gsi);
    }

    /// Sets (`Some`) or clears the MSI route of `gsi` and writes the table to KVM.
    pub fn set(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), IrqError> {
        self.set_many(&[(gsi, msg)])
    }

    /// Several routes at once, written to KVM in one KVM_SET_GSI_ROUTING if any changed.
    pub fn set_many(&self, routes: &[(u32, Option<MsiMessage>)]) -> Result<(), IrqError> {
        let mut r = super::lock(&self.routes);
        let mut changed = false;
        for &(gsi, msg) in routes {
            changed |= match msg {
                Some(m) => r.msi.insert(gsi, m) != Some(m),
                None => r.msi.remove(&gsi).is_some(),
            };
        }
        if changed {
            self.commit(&r)?;
        }
        Ok(())
    }

    fn commit(&self, r: &Routes) -> Result<(), IrqError> {
        let mut entries = default_routes();
        for (gsi, m) in &r.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let n = entries.len();
        let table =
            KvmIrqRouting::from_entries(&entries).map_err(|_| IrqError::Table { entries: n })?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|source| IrqError::SetRouting { entries: n, source })
    }
}
