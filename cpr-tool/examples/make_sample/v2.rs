//! Section states as VMM 0.2.0 writes them: `serial` v2 renamed `scratch` to `scr`
//! (listed in fixtures/renames.toml) and added an optional `fifo_enabled`, still
//! loadable by v1 readers; `cpu.regs` v2 adds registers as optional fields; a new
//! required `cpu.xsave` section carries the XSAVE area, so 0.1.0 cannot load 0.2.0
//! images while 0.2.0 loads 0.1.0 images (upgrade only).

pub use super::v1::{Clock, Msrs, Sregs};

cpr_format::state! {
    /// General-purpose registers of one vCPU.
    #[section(name = "cpu.regs", version = 2, min_version = 1, required = true)]
    pub struct Regs {
        #[hint(hex)] pub rax: u64,
        #[hint(hex)] pub rbx: u64,
        #[hint(hex)] pub rcx: u64,
        #[hint(hex)] pub rdx: u64,
        #[hint(addr)] pub rsp: u64,
        #[hint(addr)] pub rip: u64,
        /// RFLAGS.
        #[hint(flags)] pub rflags: u64,
        #[since(2)] #[hint(hex)] pub r8: Option<u64>,
        #[since(2)] #[hint(hex)] pub r9: Option<u64>
    }

    /// 16550 UART registers.
    #[section(name = "serial", version = 2, min_version = 1, required = true)]
    pub struct Serial {
        #[hint(hex)] pub ier: u8,
        #[hint(hex)] pub iir: u8,
        #[hint(hex)] pub lcr: u8,
        #[hint(hex)] pub mcr: u8,
        #[hint(flags)] pub lsr: u8,
        #[hint(hex)] pub msr: u8,
        /// Scratch register (was `scratch`).
        #[hint(hex)] pub scr: u8,
        pub baud_divisor: u16,
        pub rx_fifo: cpr_format::Bytes,
        #[since(2)] pub fifo_enabled: Option<bool>
    }

    /// The XSAVE area of one vCPU.
    #[section(name = "cpu.xsave", version = 1, min_version = 1, required = true)]
    pub struct Xsave {
        #[hint(flags)] pub xcr0: u64,
        pub region: cpr_format::Bytes
    }
}
