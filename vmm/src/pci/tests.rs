use std::sync::{Arc, Mutex};

use super::*;

fn cfg_read(bus: &PciBus, slot: u8, reg: u8, len: usize) -> Vec<u8> {
    let addr = 0x8000_0000u32 | (u32::from(slot) << 11) | u32::from(reg & 0xfc);
    bus.pio_write(CONFIG_ADDRESS, &addr.to_le_bytes());
    let mut data = vec![0; len];
    bus.pio_read(CONFIG_DATA + u16::from(reg & 3), &mut data);
    data
}

/// A device that remembers config writes and answers reads with its slot-visible register.
struct Recorder(Vec<(u16, Vec<u8>)>);

impl PciDevice for Recorder {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.0.push((offset, data.to_vec()));
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0x5a);
        addr == 0xe000_0000
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

#[test]
fn host_bridge_answers_at_slot_zero_and_empty_slots_read_all_ones() {
    let bus = PciBus::new();
    assert_eq!(cfg_read(&bus, 0, 0, 4), 0x29c0_8086u32.to_le_bytes());
    assert_eq!(
        cfg_read(&bus, 0, 0x0a, 2),
        [0x00, 0x06],
        "class: host bridge"
    );
    assert_eq!(cfg_read(&bus, 5, 0, 4), [0xff; 4]);
}

#[test]
fn config_address_reads_back_and_disabled_address_reads_all_ones() {
    let bus = PciBus::new();
    bus.pio_write(CONFIG_ADDRESS, &0x0000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    bus.pio_read(CONFIG_DATA, &mut d);
    assert_eq!(d, [0xff; 4], "enable bit clear: no config cycle");
    bus.pio_write(CONFIG_ADDRESS, &0x8000_1004u32.to_le_bytes());
    bus.pio_read(CONFIG_ADDRESS, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_1004);
}

#[test]
fn added_device_gets_slot_one_and_sees_byte_offsets() {
    let bus = PciBus::new();
    let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
    assert_eq!(bus.add(dev.clone()).unwrap(), 1);
    // Byte read at 0xcfe targets register offset + 2.
    assert_eq!(cfg_read(&bus, 1, 0x12, 1), [0x12]);
    let addr = 0x8000_0000u32 | (1 << 11) | 0x04;
    bus.pio_write(CONFIG_ADDRESS, &addr.to_le_bytes());
    bus.pio_write(CONFIG_DATA + 2, &[0xab, 0xcd]);
    assert_eq!(lock(&dev).0, vec![(0x06, vec![0xab, 0xcd])]);
    let mut d = [0u8; 4];
    assert!(bus.mmio_read(0xe000_0000, &mut d));
    assert!(!bus.mmio_read(0xe000_1000, &mut d));
}

/// A VM with the in-kernel irqchip, as the machine builds it.
fn vm_with_irqchip() -> Arc<kvm_ioctls::VmFd> {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    Arc::new(vm)
}

#[test]
fn msi_routes_go_to_kvm_with_the_irqchip_defaults_kept() {
    use vmm_sys_util::eventfd::EventFd;
    let vm = vm_with_irqchip();
    let router = GsiRouter::new(vm.clone());
    let a = router.allocate().unwrap();
    let b = router.allocate().unwrap();
    assert_eq!((a, b), (irq::FIRST_MSI_GSI, irq::FIRST_MSI_GSI + 1));
    let msg = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    router
        .set_many(&[(a, Some(msg)), (b, Some(MsiMessage { data: 0x42, ..msg }))])
        .unwrap();
    // KVM took the table: an irqfd on the MSI GSI and one on an IOAPIC pin both work and
    // fire without error.
    let efd = EventFd::new(0).unwrap();
    vm.register_irqfd(&efd, a).unwrap();
    efd.write(1).unwrap();
    let pin = EventFd::new(0).unwrap();
    let resample = EventFd::new(0).unwrap();
    vm.register_irqfd_with_resample(&pin, &resample, 17)
        .unwrap();
    vm.unregister_irqfd(&efd, a).unwrap();
    router.set(a, None).unwrap();
    router.release(a);
    assert_eq!(router.allocate().unwrap(), a, "released GSIs are reused");
}

#[test]
fn restored_router_keeps_the_saved_gsi_numbers() {
    let router = GsiRouter::new(vm_with_irqchip());
    router.claim(30);
    router.claim(24);
    assert_eq!(router.allocate().unwrap(), 25);
    router
        .set(
            30,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x30,
            }),
        )
        .unwrap();
}

#[test]
fn an_msi_route_delivers_its_vector_to_the_lapic() {
    use vmm_sys_util::eventfd::EventFd;
    let vm = vm_with_irqchip();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut lapic = vcpu.get_lapic().unwrap();
    let reg = |l: &kvm_bindings::kvm_lapic_state, off: usize| {
        u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
    };
    // Software-enable the LAPIC (SVR bit 8), as a guest does.
    let svr = reg(&lapic, 0xf0) | 0x1ff;
    for (i, b) in svr.to_le_bytes().iter().enumerate() {
        lapic.regs[0xf0 + i] = *b as _;
    }
    vcpu.set_lapic(&lapic).unwrap();
    let router = GsiRouter::new(vm.clone());
    let gsi = router.allocate().unwrap();
    router
        .set(
            gsi,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41,
            }),
        )
        .unwrap();
    let efd = EventFd::new(0).unwrap();
    vm.register_irqfd(&efd, gsi).unwrap();
    efd.write(1).unwrap();
    // IRR bit 0x41: register 0x200 + 0x10 * (0x41 / 32), bit 0x41 % 32. irqfd injection
    // may run from a kernel worker: wait for it (bounded), then assert.
    let mut irr = 0;
    for _ in 0..1000 {
        irr = reg(&vcpu.get_lapic().unwrap(), 0x220);
        if irr != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(irr, 1 << (0x41 % 32), "vector 0x41 pending in the LAPIC");
}
