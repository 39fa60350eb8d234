//! Config-space emulation, BAR sizing, MSI / MSI-X handling and the `vfio.pci` section,
//! against config spaces laid out like the lab's edu and e1000e functions.

use std::cell::RefCell;

use super::model::{BarArea, DeviceConfig, IrqMode, VfioPciModel};
use super::state::VfioPciState;
use crate::pci::config::CONFIG_SIZE;
use crate::pci::msi::MsiMessage;

/// A physical function's config space in memory, recording what reaches it.
struct PhysConfig {
    bytes: RefCell<[u8; CONFIG_SIZE]>,
    writes: RefCell<Vec<(u16, Vec<u8>)>>,
}

impl PhysConfig {
    fn new(bytes: [u8; CONFIG_SIZE]) -> PhysConfig {
        PhysConfig {
            bytes: RefCell::new(bytes),
            writes: RefCell::new(Vec::new()),
        }
    }
}

impl DeviceConfig for PhysConfig {
    fn read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()> {
        let b = self.bytes.borrow();
        data.copy_from_slice(&b[usize::from(offset)..usize::from(offset) + data.len()]);
        Ok(())
    }
    fn write(&self, offset: u16, data: &[u8]) -> std::io::Result<()> {
        self.bytes.borrow_mut()[usize::from(offset)..usize::from(offset) + data.len()]
            .copy_from_slice(data);
        self.writes.borrow_mut().push((offset, data.to_vec()));
        Ok(())
    }
}

fn put(c: &mut [u8; CONFIG_SIZE], at: usize, bytes: &[u8]) {
    c[at..at + bytes.len()].copy_from_slice(bytes);
}

/// edu: 1234:11e8, BAR0 32-bit memory 1 MiB, MSI capability (64-bit) at 0x40.
fn edu() -> ([u8; CONFIG_SIZE], [u64; 6]) {
    let mut c = [0u8; CONFIG_SIZE];
    put(&mut c, 0, &[0x34, 0x12, 0xe8, 0x11]);
    put(&mut c, 6, &[0x10, 0x00]); // status: capability list
    put(&mut c, 0x08, &[0x10, 0, 0xff, 0x00]);
    put(&mut c, 0x34, &[0x40]);
    put(&mut c, 0x3d, &[1]); // INTA
    put(&mut c, 0x3c, &[0x0b]); // what the host BIOS left: must not show through
                                // MSI: id 5, next 0, control: 64-bit, MMC = 0
    put(&mut c, 0x40, &[0x05, 0x00, 0x80, 0x00]);
    (c, [1 << 20, 0, 0, 0, 0, 0])
}

/// e1000e: 8086:10d3, BAR0/1 memory 128 KiB, BAR2 I/O 32 bytes, BAR3 memory 16 KiB holding
/// the MSI-X table (5 vectors at 0) and PBA (at 0x2000); MSI at 0xd0, MSI-X at 0xa0.
fn e1000e() -> ([u8; CONFIG_SIZE], [u64; 6]) {
    let mut c = [0u8; CONFIG_SIZE];
    put(&mut c, 0, &[0x86, 0x80, 0xd3, 0x10]);
    put(&mut c, 6, &[0x10, 0x00]);
    put(&mut c, 0x18, &[0x01, 0, 0, 0]); // BAR2: I/O
    put(&mut c, 0x34, &[0xd0]);
    put(&mut c, 0xd0, &[0x05, 0xa0, 0x80, 0x00]);
    put(&mut c, 0xa0, &[0x11, 0x00, 0x04, 0x00]); // 5 vectors
    put(&mut c, 0xa4, &3u32.to_le_bytes()); // table in BAR3 at 0
    put(&mut c, 0xa8, &(0x2000u32 | 3).to_le_bytes()); // PBA in BAR3 at 0x2000
    (c, [128 << 10, 128 << 10, 32, 16 << 10, 0, 0])
}

fn read32(m: &VfioPciModel, dev: &PhysConfig, off: u16) -> u32 {
    let mut d = [0u8; 4];
    m.config_read(dev, off, &mut d);
    u32::from_le_bytes(d)
}

fn write32(m: &mut VfioPciModel, dev: &PhysConfig, off: u16, v: u32) {
    m.config_write(dev, off, &v.to_le_bytes());
}

#[test]
fn bar_sizing_returns_the_size_mask_then_the_aligned_address() {
    let (c, sizes) = edu();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    write32(&mut m, &dev, 0x10, 0xffff_ffff);
    assert_eq!(
        read32(&m, &dev, 0x10),
        0xfff0_0000,
        "1 MiB 32-bit memory BAR"
    );
    write32(&mut m, &dev, 0x10, 0xe012_3456);
    assert_eq!(
        read32(&m, &dev, 0x10),
        0xe010_0000,
        "address aligned to the size"
    );
    assert_eq!(read32(&m, &dev, 0x14), 0, "unused BAR");
    assert!(dev.writes.borrow().is_empty(), "BAR writes stay in the VMM");
}

#[test]
fn io_bar_and_64_bit_bar_size_like_hardware() {
    let (mut c, _) = e1000e();
    put(&mut c, 0x20, &[0x0c, 0, 0, 0]); // BAR4: 64-bit prefetchable memory
    let sizes = [128 << 10, 128 << 10, 32, 16 << 10, 1 << 32, 0];
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    write32(&mut m, &dev, 0x18, 0xffff_ffff);
    assert_eq!(read32(&m, &dev, 0x18), 0xffff_ffe1, "32-byte I/O BAR");
    write32(&mut m, &dev, 0x20, 0xffff_ffff);
    write32(&mut m, &dev, 0x24, 0xffff_ffff);
    assert_eq!(read32(&m, &dev, 0x20), 0x0000_000c);
    assert_eq!(
        read32(&m, &dev, 0x24),
        0xffff_ffff,
        "4 GiB: low dword has no address bits"
    );
    write32(&mut m, &dev, 0x24, 0x0000_0008);
    write32(&mut m, &dev, 0x20, 0);
    assert_eq!(m.bars[4].addr, 0x8_0000_0000);
}

#[test]
fn emulated_registers_hide_the_host_and_the_rest_passes_through() {
    let (c, sizes) = edu();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    assert_eq!(read32(&m, &dev, 0), 0x11e8_1234, "IDs come from the device");
    assert_eq!(read32(&m, &dev, 0x30), 0, "no expansion ROM");
    let mut line = [0u8];
    m.config_read(&dev, 0x3c, &mut line);
    assert_eq!(line, [0], "host interrupt line not shown");
    m.config_write(&dev, 0x3c, &[10]);
    m.config_read(&dev, 0x3c, &mut line);
    assert_eq!(line, [10]);
    // Command: memory + bus master reaches the device (QEMU drops DMA without it).
    m.config_write(&dev, 0x04, &[0x06, 0x00]);
    assert_eq!(*dev.writes.borrow(), vec![(0x04, vec![0x06, 0x00])]);
    assert!(m.memory_enabled());
    // A dword write over command + status goes through as one run.
    write32(&mut m, &dev, 0x04, 0x0000_0007);
    assert_eq!(dev.writes.borrow()[1], (0x04, vec![7, 0, 0, 0]));
}

#[test]
fn msi_capability_is_emulated_and_yields_the_route() {
    let (c, sizes) = edu();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    assert_eq!(m.irq_mode(), Some(IrqMode::Intx));
    write32(&mut m, &dev, 0x44, 0xfee0_1000);
    write32(&mut m, &dev, 0x48, 0);
    m.config_write(&dev, 0x4c, &0x4041u16.to_le_bytes());
    assert_eq!(m.msi_route(), None, "not enabled yet");
    // Enable, trying to set MME = 8 vectors and read-only bits too.
    m.config_write(&dev, 0x42, &[0x7f, 0xff]);
    assert_eq!(
        read32(&m, &dev, 0x40) >> 16,
        0x00f1,
        "64-bit stays; MME taken, MMC 0"
    );
    assert_eq!(m.irq_mode(), Some(IrqMode::Msi));
    assert_eq!(
        m.msi_route(),
        Some(MsiMessage {
            address: 0xfee0_1000,
            data: 0x4041
        })
    );
    assert!(
        dev.writes.borrow().is_empty(),
        "MSI programming stays in the VMM"
    );
}

fn enable_msix(m: &mut VfioPciModel, dev: &PhysConfig, function_mask: bool) {
    let ctrl: u16 = 0x8000 | if function_mask { 0x4000 } else { 0 };
    m.config_write(dev, 0xa2, &ctrl.to_le_bytes());
}

#[test]
fn msix_table_writes_become_routes_per_vector() {
    let (c, sizes) = e1000e();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    assert_eq!(read32(&m, &dev, 0xa0) >> 16, 0x0004, "5 vectors, disabled");
    // Vector 2: 8-byte address write, then data, then unmask.
    let changed = m.msix_table.write(2 * 16, &0xfee0_0000u64.to_le_bytes());
    assert_eq!(changed, vec![2]);
    m.msix_table.write(2 * 16 + 8, &0x31u32.to_le_bytes());
    m.msix_table.write(2 * 16 + 12, &0u32.to_le_bytes());
    assert_eq!(m.msix_route(2), None, "MSI-X not enabled");
    enable_msix(&mut m, &dev, true);
    assert_eq!(m.msix_route(2), None, "function masked");
    enable_msix(&mut m, &dev, false);
    assert_eq!(m.irq_mode(), Some(IrqMode::Msix));
    assert_eq!(
        m.msix_route(2),
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x31
        })
    );
    assert_eq!(m.msix_route(0), None, "vector 0 still masked from reset");
    assert_eq!(m.msix_route(5), None, "no such vector");
    // Only the mask bit of vector control is writable; reads return what the guest wrote.
    m.msix_table
        .write(2 * 16 + 12, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(m.msix_route(2), None);
    let mut d = [0u8; 4];
    m.msix_table.read(2 * 16 + 12, &mut d);
    assert_eq!(u32::from_le_bytes(d), 1);
    m.msix_table.read(2 * 16 + 8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x31);
}

#[test]
fn trapped_bar_accesses_find_table_pba_and_registers() {
    let (c, sizes) = e1000e();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    m.assign_bar(0, 0xe000_0000);
    m.assign_bar(3, 0xe004_0000);
    assert_eq!(m.bar_at(0xe004_0010), None, "memory decoding off");
    m.config_write(&dev, 0x04, &[0x06, 0x00]);
    assert_eq!(m.bar_at(0xe004_0010), Some((3, 0x10)));
    assert_eq!(m.bar_at(0xe000_0100), Some((0, 0x100)));
    assert!(m.bar_has_msix(3) && !m.bar_has_msix(0));
    assert_eq!(m.area(3, 0x10), BarArea::MsixTable(0x10));
    assert_eq!(m.area(3, 0x2000), BarArea::MsixPba(0));
    assert_eq!(m.area(3, 0x3000), BarArea::Device(0x3000));
    m.msix_table.set_pending(4, true);
    let mut d = [0u8; 8];
    m.msix_table.read_pba(0, &mut d);
    assert_eq!(u64::from_le_bytes(d), 1 << 4);
}

fn through_image(state: &VfioPciState) -> VfioPciState {
    let mut w = cpr_format::ImageWriter::new(cpr_format::sample::header());
    w.add_section("nic0", state).unwrap();
    let bytes = w.to_bytes().unwrap();
    let image = cpr_format::Image::from_bytes(&bytes).unwrap();
    image.section::<VfioPciState>("nic0").unwrap().unwrap()
}

#[test]
fn state_round_trips_through_an_image_and_restores_routes_and_bars() {
    let (c, sizes) = e1000e();
    let dev = PhysConfig::new(c);
    let mut m = VfioPciModel::new(c, sizes);
    m.assign_bar(3, 0xe004_0000);
    m.config_write(&dev, 0x04, &[0x06, 0x00]);
    m.config_write(&dev, 0x3c, &[11]);
    m.msix_table.write(16, &0xfee0_0000u32.to_le_bytes());
    m.msix_table.write(16 + 8, &0x41u32.to_le_bytes());
    m.msix_table.write(16 + 12, &0u32.to_le_bytes());
    m.msix_table.set_pending(3, true);
    enable_msix(&mut m, &dev, false);
    let mut view = [0u8; CONFIG_SIZE];
    for off in (0..CONFIG_SIZE).step_by(4) {
        m.config_read(&dev, off as u16, &mut view[off..off + 4]);
    }
    let mut state = m.save("0000:00:03.0", view);
    state.msix_gsis = vec![24, 25, 26, 27, 28];
    state.msix_vectors = 5;
    let back = through_image(&state);
    assert_eq!(back, state);
    let r = VfioPciModel::restore(&back).unwrap();
    assert_eq!(r.msix_route(1), m.msix_route(1));
    assert!(r.msix_route(1).is_some());
    assert!(r.msix_table.pending(3));
    assert_eq!(r.bar_at(0xe004_0000), Some((3, 0)));
    assert_eq!(read32(&r, &dev, 0x1c), 0xe004_0000);
    assert_eq!(r.interrupt_line(), 11);
    for off in (0..CONFIG_SIZE as u16).step_by(4) {
        assert_eq!(
            read32(&r, &dev, off),
            read32(&m, &dev, off),
            "config dword {off:#x}"
        );
    }
}

#[test]
fn restore_rejects_state_that_does_not_fit_the_device() {
    let (c, sizes) = e1000e();
    let m = VfioPciModel::new(c, sizes);
    let mut state = m.save("0000:00:03.0", c);
    state.msix_table.pop();
    let err = VfioPciModel::restore(&state).err().unwrap();
    assert_eq!(
        err.to_string(),
        "saved MSI-X table of 0000:00:03.0 has 4 entries, the device has 5"
    );
    let mut state = m.save("0000:00:03.0", c);
    state.config.0.truncate(64);
    assert!(VfioPciModel::restore(&state).is_err());
    let mut state = m.save("0000:00:03.0", c);
    state.bars[1].kind = 9;
    assert!(VfioPciModel::restore(&state).is_err());
}

#[test]
fn container_section_round_trips_and_this_binary_reads_both_vfio_sections() {
    use crate::vfio::set::{DmaMappingState, VfioContainerState, VfioDeviceRef};
    let container = VfioContainerState {
        groups: vec![1, 2],
        devices: vec![
            VfioDeviceRef {
                id: "edu0".into(),
                host: "0000:00:01.0".into(),
                group: 1,
            },
            VfioDeviceRef {
                id: "nic0".into(),
                host: "0000:00:02.0".into(),
                group: 2,
            },
        ],
        mappings: vec![DmaMappingState {
            iova: 0,
            size: 64 << 20,
            block: "ram-below-4g".into(),
            file_offset: 0,
            st_dev: 0x10,
            st_ino: 4242,
        }],
    };
    let (c, sizes) = e1000e();
    let pci = VfioPciModel::new(c, sizes).save("0000:00:02.0", c);
    let mut w = cpr_format::ImageWriter::new(cpr_format::sample::header());
    w.add_section("0", &container).unwrap();
    w.add_section("nic0", &pci).unwrap();
    let image = cpr_format::Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        image.section::<VfioContainerState>("0").unwrap().unwrap(),
        container
    );
    let schema = cpr_format::Schema::new()
        .with::<VfioContainerState>()
        .with::<VfioPciState>();
    assert!(image.check_compat(&schema).is_compatible());
    // A reader that does not know the (required) VFIO sections must refuse the image.
    let without = cpr_format::Schema::new().with::<VfioContainerState>();
    assert!(!image.check_compat(&without).is_compatible());
}
