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
