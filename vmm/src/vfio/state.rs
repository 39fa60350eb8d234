//! Live-update state of an assigned PCI function (section `vfio.pci`, one per device,
//! instance = the device id). The fds (container, group, device, interrupt eventfds) travel
//! in the fd manifest under the names in [`super::fd_names`]; this is everything else.

use cpr_format::Bytes;

use super::model::VfioPciModel;
use crate::pci::config::{Bar, BarKind, CONFIG_SIZE};
use crate::pci::msi::{MsixEntry, MsixTable};

cpr_format::state! {
    /// One BAR as the guest programmed it.
    #[derive(Copy, Eq)]
    pub struct BarState {
        /// 0 unused, 1 I/O, 2 32-bit memory, 3 64-bit memory, 4 high half of a 64-bit BAR.
        pub kind: u8,
        pub prefetchable: bool,
        #[hint(hex)] pub size: u64,
        #[hint(addr)] pub addr: u64,
    }

    /// One MSI-X table entry.
    #[derive(Copy, Eq)]
    pub struct MsixEntryState {
        #[hint(hex)] pub addr_lo: u32,
        #[hint(hex)] pub addr_hi: u32,
        #[hint(hex)] pub data: u32,
        #[hint(flags)] pub control: u32,
    }

    /// INTx as the guest and the VMM left it.
    #[derive(Copy, Eq)]
    pub struct IntxState {
        pub line: u8,
        pub pin: u8,
        /// The VMM had INTx wired (eventfd + resample) to the device: the manifest holds
        /// vfio-irq-ID-intx and vfio-irq-ID-intx-resample.
        pub enabled: bool,
        /// IOAPIC pin (GSI) INTx is wired to (0: none).
        pub gsi: u32,
    }

    /// An assigned PCI function (`-device vfio-pci,host=BDF,id=ID`).
    #[section(name = "vfio.pci", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct VfioPciState {
        /// Host PCI address (BDF), checked against the command line on restore.
        pub host: String,
        /// Conventional config space (256 bytes) as the guest reads it: the emulated parts
        /// (BARs, ROM, interrupt line, MSI / MSI-X capabilities) are authoritative.
        pub config: Bytes,
        /// The command register as the guest last wrote it.
        #[hint(flags)] pub command: u16,
        pub bars: Vec<BarState>,
        pub msix_table: Vec<MsixEntryState>,
        /// MSI-X pending bits, 64 vectors per word.
        #[hint(hex)] pub msix_pba: Vec<u64>,
        /// GSI of MSI vector 0 / each MSI-X vector, as routed in KVM (0 = none).
        pub msi_gsis: Vec<u32>,
        pub msix_gsis: Vec<u32>,
        /// Interrupt eventfds in use: the manifest holds vfio-irq-ID-msi0 / -msixN.
        pub msi_vectors: u32,
        pub msix_vectors: u32,
        pub intx: IntxState,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("saved config space of {host} has {len} bytes, expected {CONFIG_SIZE}")]
    ConfigSize { host: String, len: usize },
    #[error("saved state of {host} has {len} BARs, expected 6")]
    BarCount { host: String, len: usize },
    #[error("saved BAR {index} of {host} has unknown kind {kind}")]
    BarKind {
        host: String,
        index: usize,
        kind: u8,
    },
    #[error("saved MSI-X table of {host} has {saved} entries, the device has {device}")]
    MsixTable {
        host: String,
        saved: usize,
        device: usize,
    },
    #[error("saved MSI-X PBA of {host} has {saved} words, {expected} expected for its table")]
    MsixPba {
        host: String,
        saved: usize,
        expected: usize,
    },
}

fn kind_code(k: BarKind) -> u8 {
    match k {
        BarKind::Unused => 0,
        BarKind::Io => 1,
        BarKind::Mem32 => 2,
        BarKind::Mem64 => 3,
        BarKind::Mem64High => 4,
    }
}

fn kind_from(code: u8) -> Option<BarKind> {
    Some(match code {
        0 => BarKind::Unused,
        1 => BarKind::Io,
        2 => BarKind::Mem32,
        3 => BarKind::Mem64,
        4 => BarKind::Mem64High,
        _ => return None,
    })
}

impl VfioPciModel {
    /// The model's part of the state: `config` is the full guest view (the caller reads
    /// the device's bytes through `config_read`), GSIs and eventfd counts come from the
    /// device layer.
    pub fn save(&self, host: &str, config: [u8; CONFIG_SIZE]) -> VfioPciState {
        VfioPciState {
            host: host.to_string(),
            config: Bytes(config.to_vec()),
            command: self.command,
            bars: self
                .bars
                .iter()
                .map(|b| BarState {
                    kind: kind_code(b.kind),
                    prefetchable: b.prefetchable,
                    size: b.size,
                    addr: b.addr,
                })
                .collect(),
            msix_table: self
                .msix_table
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    addr_lo: e.addr_lo,
                    addr_hi: e.addr_hi,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            msix_pba: self.msix_table.pba.clone(),
            msi_gsis: Vec::new(),
            msix_gsis: Vec::new(),
            msi_vectors: 0,
            msix_vectors: 0,
            intx: IntxState {
                line: self.interrupt_line(),
                pin: self.interrupt_pin(),
                enabled: false,
                gsi: 0,
            },
        }
    }

    /// Rebuilds the model from saved state, checking it fits together. Nothing is written
    /// to the device: it kept its config across the update (no reset on incoming).
    pub fn restore(state: &VfioPciState) -> Result<VfioPciModel, StateError> {
        let host = || state.host.clone();
        let config: [u8; CONFIG_SIZE] =
            state
                .config
                .as_slice()
                .try_into()
                .map_err(|_| StateError::ConfigSize {
                    host: host(),
                    len: state.config.len(),
                })?;
        if state.bars.len() != 6 {
            return Err(StateError::BarCount {
                host: host(),
                len: state.bars.len(),
            });
        }
        let sizes: [u64; 6] = std::array::from_fn(|i| state.bars[i].size);
        let mut m = VfioPciModel::new(config, sizes);
        // `new` resets emulated registers: put the saved ones back.
        m.cfg = config;
        m.command = state.command;
        for (i, b) in state.bars.iter().enumerate() {
            let kind = kind_from(b.kind).ok_or(StateError::BarKind {
                host: host(),
                index: i,
                kind: b.kind,
            })?;
            m.bars[i] = Bar {
                kind,
                prefetchable: b.prefetchable,
                size: b.size,
                addr: b.addr,
            };
        }
        let vectors = m.msix.map_or(0, |c| usize::from(c.vectors));
        if state.msix_table.len() != vectors {
            return Err(StateError::MsixTable {
                host: host(),
                saved: state.msix_table.len(),
                device: vectors,
            });
        }
        if state.msix_pba.len() != vectors.div_ceil(64) {
            return Err(StateError::MsixPba {
                host: host(),
                saved: state.msix_pba.len(),
                expected: vectors.div_ceil(64),
            });
        }
        m.msix_table = MsixTable {
            entries: state
                .msix_table
                .iter()
                .map(|e| MsixEntry {
                    addr_lo: e.addr_lo,
                    addr_hi: e.addr_hi,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            pba: state.msix_pba.clone(),
        };
        Ok(m)
    }
}
