//! Section states as VMM 0.1.0 wrote them.

cpr_format::state! {
    /// General-purpose registers of one vCPU.
    #[section(name = "cpu.regs", version = 1, min_version = 1, required = true)]
    pub struct Regs {
        #[hint(hex)] pub rax: u64,
        #[hint(hex)] pub rbx: u64,
        #[hint(hex)] pub rcx: u64,
        #[hint(hex)] pub rdx: u64,
        #[hint(addr)] pub rsp: u64,
        #[hint(addr)] pub rip: u64,
        /// RFLAGS.
        #[hint(flags)] pub rflags: u64
    }

    /// A segment register.
    pub struct Segment {
        #[hint(addr)] pub base: u64,
        #[hint(hex)] pub limit: u32,
        #[hint(hex)] pub selector: u16,
        #[hint(hex)] pub type_: u8
    }

    /// Control and segment registers of one vCPU.
    #[section(name = "cpu.sregs", version = 1, min_version = 1, required = true)]
    pub struct Sregs {
        pub cs: Segment,
        pub ds: Segment,
        #[hint(flags)] pub cr0: u64,
        #[hint(addr)] pub cr3: u64,
        #[hint(flags)] pub cr4: u64,
        #[hint(flags)] pub efer: u64,
        #[hint(addr)] pub apic_base: u64
    }

    /// One model-specific register.
    pub struct Msr {
        #[hint(hex)] pub index: u32,
        #[hint(hex)] pub value: u64
    }

    /// MSRs and the TSC of one vCPU.
    #[section(name = "cpu.msrs", version = 1, min_version = 1, required = true)]
    pub struct Msrs {
        pub tsc: u64,
        pub msrs: Vec<Msr>
    }

    /// 16550 UART registers.
    #[section(name = "serial", version = 1, min_version = 1, required = true)]
    pub struct Serial {
        #[hint(hex)] pub ier: u8,
        #[hint(hex)] pub iir: u8,
        #[hint(hex)] pub lcr: u8,
        #[hint(hex)] pub mcr: u8,
        #[hint(flags)] pub lsr: u8,
        #[hint(hex)] pub msr: u8,
        /// Scratch register.
        #[hint(hex)] pub scratch: u8,
        pub baud_divisor: u16,
        pub rx_fifo: cpr_format::Bytes
    }

    /// kvmclock.
    #[section(name = "clock", version = 1, min_version = 1, required = true)]
    pub struct Clock {
        #[hint(unit("ns"))] pub clock: u64,
        #[hint(flags)] pub flags: u32
    }
}
