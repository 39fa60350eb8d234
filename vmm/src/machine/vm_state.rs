//! Named mirrors of the VM-wide in-kernel device state: the 8259 pair, the IOAPIC, the PIT
//! (i8254) and kvmclock. Conversions both ways, as in `vcpu_state`. Declared with
//! cpr-format's `state!`: sections `kvm.irqchip`, `kvm.pit` and `kvm.clock`.

use kvm_bindings::{
    kvm_clock_data, kvm_ioapic_state, kvm_irqchip, kvm_pic_state, kvm_pit_channel_state,
    kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

/// IOAPIC redirection table size in KVM.
pub const IOAPIC_PINS: usize = 24;

cpr_format::state! {
    /// One 8259 PIC (KVM_GET_IRQCHIP, chip 0 master or 1 slave).
    #[derive(Copy, Default, Eq)]
    pub struct PicState {
        #[hint(hex)] pub last_irr: u8,
        #[hint(hex)] pub irr: u8,
        #[hint(hex)] pub imr: u8,
        #[hint(hex)] pub isr: u8,
        pub priority_add: u8,
        #[hint(hex)] pub irq_base: u8,
        pub read_reg_select: u8,
        pub poll: u8,
        pub special_mask: u8,
        pub init_state: u8,
        pub auto_eoi: u8,
        pub rotate_on_auto_eoi: u8,
        pub special_fully_nested_mode: u8,
        pub init4: u8,
        #[hint(hex)] pub elcr: u8,
        #[hint(hex)] pub elcr_mask: u8,
    }

    /// The IOAPIC (KVM_GET_IRQCHIP, chip 2).
    #[derive(Default, Eq)]
    pub struct IoapicState {
        #[hint(addr)] pub base_address: u64,
        #[hint(hex)] pub ioregsel: u32,
        pub id: u32,
        #[hint(hex)] pub irr: u32,
        /// Redirection table entries, 64 bits each (vector, delivery mode, mask, destination).
        #[hint(hex)] pub redirtbl: Vec<u64>,
    }

    /// The three in-kernel interrupt controllers (KVM_GET_IRQCHIP x3).
    #[section(name = "kvm.irqchip", version = 1, min_version = 1, required = true)]
    #[derive(Default, Eq)]
    pub struct IrqchipState {
        pub pic_master: PicState,
        pub pic_slave: PicState,
        pub ioapic: IoapicState,
    }

    /// One i8254 channel.
    #[derive(Copy, Default, Eq)]
    pub struct PitChannel {
        pub count: u32,
        pub latched_count: u16,
        pub count_latched: u8,
        pub status_latched: u8,
        #[hint(hex)] pub status: u8,
        pub read_state: u8,
        pub write_state: u8,
        pub write_latch: u8,
        pub rw_mode: u8,
        pub mode: u8,
        pub bcd: u8,
        pub gate: u8,
        /// Host-relative load time (KVM rebases it on set).
        #[hint(unit("ns"))] pub count_load_time: i64,
    }

    /// The in-kernel PIT (KVM_GET_PIT2).
    #[section(name = "kvm.pit", version = 1, min_version = 1, required = true)]
    #[derive(Default, Eq)]
    pub struct PitState {
        pub channels: Vec<PitChannel>,
        #[hint(flags)] pub flags: u32,
    }

    /// kvmclock (KVM_GET_CLOCK): guest clock and the flags KVM reported.
    #[section(name = "kvm.clock", version = 1, min_version = 1, required = true)]
    #[derive(Copy, Default, Eq)]
    pub struct ClockState {
        #[hint(unit("ns"))] pub clock: u64,
        #[hint(flags)] pub flags: u32,
        #[hint(unit("ns"))] pub realtime: u64,
        pub host_tsc: u64,
    }
}

macro_rules! pic_fields {
    ($from:expr, $to:ident) => {
        $to {
            last_irr: $from.last_irr,
            irr: $from.irr,
            imr: $from.imr,
            isr: $from.isr,
            priority_add: $from.priority_add,
            irq_base: $from.irq_base,
            read_reg_select: $from.read_reg_select,
            poll: $from.poll,
            special_mask: $from.special_mask,
            init_state: $from.init_state,
            auto_eoi: $from.auto_eoi,
            rotate_on_auto_eoi: $from.rotate_on_auto_eoi,
            special_fully_nested_mode: $from.special_fully_nested_mode,
            init4: $from.init4,
            elcr: $from.elcr,
            elcr_mask: $from.elcr_mask,
        }
    };
}

impl From<&kvm_pic_state> for PicState {
    fn from(p: &kvm_pic_state) -> Self {
        pic_fields!(p, PicState)
    }
}

impl From<&PicState> for kvm_pic_state {
    fn from(p: &PicState) -> Self {
        pic_fields!(p, kvm_pic_state)
    }
}

impl From<&kvm_ioapic_state> for IoapicState {
    fn from(s: &kvm_ioapic_state) -> Self {
        IoapicState {
            base_address: s.base_address,
            ioregsel: s.ioregsel,
            id: s.id,
            irr: s.irr,
            // SAFETY: every variant of the redirection entry union is plain data of 64 bits.
            redirtbl: s.redirtbl.iter().map(|e| unsafe { e.bits }).collect(),
        }
    }
}

impl From<&IoapicState> for kvm_ioapic_state {
    fn from(s: &IoapicState) -> Self {
        let mut k = kvm_ioapic_state {
            base_address: s.base_address,
            ioregsel: s.ioregsel,
            id: s.id,
            irr: s.irr,
            ..Default::default()
        };
        for (dst, src) in k.redirtbl.iter_mut().zip(&s.redirtbl) {
            dst.bits = *src;
        }
        k
    }
}

impl IrqchipState {
    /// Builds the three `kvm_irqchip` structs KVM_SET_IRQCHIP takes, in chip id order.
    pub fn to_kvm(&self) -> [kvm_irqchip; 3] {
        let mut master = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        master.chip.pic = (&self.pic_master).into();
        let mut slave = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_SLAVE,
            ..Default::default()
        };
        slave.chip.pic = (&self.pic_slave).into();
        let mut ioapic = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        ioapic.chip.ioapic = (&self.ioapic).into();
        [master, slave, ioapic]
    }

    /// Reads the named state out of the three `kvm_irqchip` structs KVM_GET_IRQCHIP filled.
    pub fn from_kvm(master: &kvm_irqchip, slave: &kvm_irqchip, ioapic: &kvm_irqchip) -> Self {
        // SAFETY: KVM filled each struct for the chip id we asked for, so the union holds
        // that variant; all variants are plain integer data.
        unsafe {
            IrqchipState {
                pic_master: (&master.chip.pic).into(),
                pic_slave: (&slave.chip.pic).into(),
                ioapic: (&ioapic.chip.ioapic).into(),
            }
        }
    }
}

macro_rules! pit_fields {
    ($from:expr, $to:ident) => {
        $to {
            count: $from.count,
            latched_count: $from.latched_count,
            count_latched: $from.count_latched,
            status_latched: $from.status_latched,
            status: $from.status,
            read_state: $from.read_state,
            write_state: $from.write_state,
            write_latch: $from.write_latch,
            rw_mode: $from.rw_mode,
            mode: $from.mode,
            bcd: $from.bcd,
            gate: $from.gate,
            count_load_time: $from.count_load_time,
        }
    };
}

impl From<&kvm_pit_state2> for PitState {
    fn from(p: &kvm_pit_state2) -> Self {
        PitState {
            channels: p
                .channels
                .iter()
                .map(|c| pit_fields!(c, PitChannel))
                .collect(),
            flags: p.flags,
        }
    }
}

impl From<&PitState> for kvm_pit_state2 {
    fn from(p: &PitState) -> Self {
        let mut k = kvm_pit_state2 {
            flags: p.flags,
            ..Default::default()
        };
        for (dst, c) in k.channels.iter_mut().zip(&p.channels) {
            *dst = pit_fields!(c, kvm_pit_channel_state);
        }
        k
    }
}

impl From<&kvm_clock_data> for ClockState {
    fn from(c: &kvm_clock_data) -> Self {
        ClockState {
            clock: c.clock,
            flags: c.flags,
            realtime: c.realtime,
            host_tsc: c.host_tsc,
        }
    }
}

impl From<&ClockState> for kvm_clock_data {
    fn from(c: &ClockState) -> Self {
        kvm_clock_data {
            clock: c.clock,
            flags: c.flags,
            realtime: c.realtime,
            host_tsc: c.host_tsc,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqchip_round_trip() {
        let state = IrqchipState {
            pic_master: PicState {
                irr: 1,
                imr: 0xfe,
                irq_base: 0x20,
                elcr_mask: 0xf8,
                init4: 1,
                ..Default::default()
            },
            pic_slave: PicState {
                imr: 0xff,
                irq_base: 0x28,
                ..Default::default()
            },
            ioapic: IoapicState {
                base_address: 0xfec0_0000,
                ioregsel: 0x10,
                id: 0,
                irr: 4,
                redirtbl: (0..IOAPIC_PINS as u64)
                    .map(|i| 0x10000 | (0x20 + i))
                    .collect(),
            },
        };
        let [m, s, i] = state.to_kvm();
        assert_eq!(m.chip_id, KVM_IRQCHIP_PIC_MASTER);
        assert_eq!(i.chip_id, KVM_IRQCHIP_IOAPIC);
        assert_eq!(IrqchipState::from_kvm(&m, &s, &i), state);
    }

    #[test]
    fn pit_and_clock_round_trip() {
        let mut k = kvm_pit_state2 {
            flags: 1,
            ..Default::default()
        };
        k.channels[0].count = 23864;
        k.channels[0].mode = 2;
        k.channels[0].rw_mode = 3;
        k.channels[0].gate = 1;
        k.channels[0].count_load_time = -5;
        k.channels[2].latched_count = 7;
        let named = PitState::from(&k);
        assert_eq!(named.channels.len(), 3);
        assert_eq!(named.channels[0].count, 23864);
        let back = kvm_pit_state2::from(&named);
        assert_eq!(back.flags, k.flags);
        for (a, b) in back.channels.iter().zip(&k.channels) {
            assert_eq!(PitChannel::from_kvm(a), PitChannel::from_kvm(b));
        }

        let c = kvm_clock_data {
            clock: 123_456,
            flags: 0xe,
            realtime: 9,
            host_tsc: 10,
            ..Default::default()
        };
        assert_eq!(kvm_clock_data::from(&ClockState::from(&c)), c);
    }

    impl PitChannel {
        fn from_kvm(c: &kvm_pit_channel_state) -> Self {
            pit_fields!(c, PitChannel)
        }
    }
}
