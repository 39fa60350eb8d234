//! 8250 UART at COM1 (ports 0x3f8..=0x3ff, IRQ 4), modelled by vm-superio.
//!
//! The interrupt is an EventFd that the machine registers as a KVM irqfd for GSI 4, so
//! raising it needs no ioctl. Input the guest has no room for (vm-superio's FIFO holds 64
//! bytes) waits in `pending` and is fed in as the guest reads the receive buffer.

use std::collections::VecDeque;
use std::io;

use vm_superio::serial::{NoEvents, SerialState as SuperioSerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::machine::SerialOutput;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
const RBR_OFFSET: u8 = 0;
/// vm-superio's receive FIFO size (private in the crate).
pub const UART_FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot create the UART interrupt eventfd")]
    EventFd(#[source] io::Error),
    #[error("UART register write at offset {offset} failed: {detail}")]
    Write { offset: u8, detail: String },
    #[error("UART input failed: {0}")]
    Input(String),
    #[error("saved UART receive FIFO holds {len} bytes, more than its capacity {capacity}")]
    FifoOverfull { len: usize, capacity: usize },
}

/// vm-superio has no `Trigger` for an EventFd; this is it.
pub struct IrqEventFd(pub EventFd);

impl Trigger for IrqEventFd {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

cpr_format::state! {
    /// Saved UART: the registers vm-superio keeps, its receive FIFO, and input not yet
    /// queued.
    #[section(name = "serial.uart8250", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct SerialState {
        #[hint(hex)] pub baud_divisor_low: u8,
        #[hint(hex)] pub baud_divisor_high: u8,
        #[hint(hex)] pub interrupt_enable: u8,
        #[hint(hex)] pub interrupt_identification: u8,
        #[hint(hex)] pub line_control: u8,
        #[hint(hex)] pub line_status: u8,
        #[hint(hex)] pub modem_control: u8,
        #[hint(hex)] pub modem_status: u8,
        #[hint(hex)] pub scratch: u8,
        /// Received bytes the guest has not read (at most 64).
        pub rx_fifo: cpr_format::Bytes,
        /// Input typed by the user that did not fit in the FIFO yet.
        pub pending_input: cpr_format::Bytes,
    }
}

pub struct SerialDevice {
    uart: Serial<IrqEventFd, NoEvents, SerialOutput>,
    pending: VecDeque<u8>,
    /// The interrupt eventfd, kept to build a fresh UART on reset.
    irq: EventFd,
}

impl SerialDevice {
    /// Builds the UART; returns it and a clone of its interrupt eventfd (for the irqfd).
    pub fn new(out: SerialOutput) -> Result<(SerialDevice, EventFd), SerialError> {
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SerialError::EventFd)?;
        let irq = evt.try_clone().map_err(SerialError::EventFd)?;
        let dev = SerialDevice {
            uart: Serial::new(
                IrqEventFd(evt.try_clone().map_err(SerialError::EventFd)?),
                out,
            ),
            pending: VecDeque::new(),
            irq: evt,
        };
        Ok((dev, irq))
    }

    /// Rebuilds the UART from its saved state. vm-superio re-raises a pending interrupt.
    pub fn restore(
        state: &SerialState,
        out: SerialOutput,
    ) -> Result<(SerialDevice, EventFd), SerialError> {
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SerialError::EventFd)?;
        let irq = evt.try_clone().map_err(SerialError::EventFd)?;
        let s = SuperioSerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.rx_fifo.to_vec(),
        };
        if state.rx_fifo.len() > UART_FIFO_SIZE {
            return Err(SerialError::FifoOverfull {
                len: state.rx_fifo.len(),
                capacity: UART_FIFO_SIZE,
            });
        }
        // With the length checked, the only failure left is raising the interrupt.
        let trigger = IrqEventFd(evt.try_clone().map_err(SerialError::EventFd)?);
        let uart = Serial::from_state(&s, trigger, NoEvents, out)
            .map_err(|e| SerialError::Input(format!("{e:?}")))?;
        let dev = SerialDevice {
            uart,
            pending: state.pending_input.iter().copied().collect(),
            irq: evt,
        };
        Ok((dev, irq))
    }

    /// Back to power-on register state, keeping the output sink and interrupt eventfd.
    pub fn reset(&mut self) -> Result<(), SerialError> {
        let fresh = || {
            self.irq
                .try_clone()
                .map(IrqEventFd)
                .map_err(SerialError::EventFd)
        };
        let placeholder = Serial::new(fresh()?, Box::new(io::sink()) as SerialOutput);
        let old = std::mem::replace(&mut self.uart, placeholder);
        self.uart = Serial::new(fresh()?, old.into_writer());
        self.pending.clear();
        Ok(())
    }

    pub fn save(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer.into(),
            pending_input: self.pending.iter().copied().collect::<Vec<u8>>().into(),
        }
    }

    /// Register offset of a COM1 port.
    pub fn offset(port: u16) -> Option<u8> {
        (COM1_PORT..COM1_PORT + 8)
            .contains(&port)
            .then(|| (port - COM1_PORT) as u8)
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        let v = self.uart.read(offset);
        if offset == RBR_OFFSET && !self.pending.is_empty() {
            // The guest made room: move waiting input into the FIFO. An error here can only
            // be the interrupt eventfd; the bytes are then still queued and the guest sees
            // them through LSR.
            let _ = self.feed();
        }
        v
    }

    pub fn write(&mut self, offset: u8, value: u8) -> Result<(), SerialError> {
        self.uart
            .write(offset, value)
            .map_err(|e| SerialError::Write {
                offset,
                detail: format!("{e:?}"),
            })
    }

    /// Queues bytes typed by the user; as many as fit go into the FIFO now.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        self.pending.extend(bytes.iter().copied());
        self.feed()
    }

    fn feed(&mut self) -> Result<(), SerialError> {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.pending.is_empty() {
            return Ok(());
        }
        let n = room.min(self.pending.len());
        let chunk: Vec<u8> = self.pending.iter().take(n).copied().collect();
        let queued = self
            .uart
            .enqueue_raw_bytes(&chunk)
            .map_err(|e| SerialError::Input(format!("{e:?}")))?;
        self.pending.drain(..queued);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink() {
        let sink = Sink::default();
        let (mut dev, _irq) = SerialDevice::new(Box::new(sink.clone())).unwrap();
        for b in b"hi" {
            dev.write(0, *b).unwrap();
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_beyond_the_fifo_waits_and_interrupts() {
        let (mut dev, irq) = SerialDevice::new(Box::new(Sink::default())).unwrap();
        dev.write(1, 1).unwrap(); // IER: receive data interrupt
        let input: Vec<u8> = (0..100u8).collect();
        dev.input(&input).unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut got = Vec::new();
        while dev.read(5) & 1 == 1 {
            got.push(dev.read(0));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn state_round_trips_with_pending_input_and_reraises_interrupt() {
        let (mut dev, _irq) = SerialDevice::new(Box::new(Sink::default())).unwrap();
        dev.write(3, 0x03).unwrap(); // LCR 8N1
        dev.write(7, 0x5a).unwrap(); // scratch
        dev.write(1, 1).unwrap();
        let input: Vec<u8> = (0..80u8).collect();
        dev.input(&input).unwrap();
        let state = dev.save();
        assert_eq!(state.rx_fifo.len(), 64);
        assert_eq!(state.pending_input.len(), 16);
        let (mut again, irq) = SerialDevice::restore(&state, Box::new(Sink::default())).unwrap();
        assert_eq!(again.save(), state);
        assert!(
            irq.read().unwrap() >= 1,
            "pending receive interrupt re-raised"
        );
        let mut got = Vec::new();
        while again.read(5) & 1 == 1 {
            got.push(again.read(0));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn overfull_fifo_is_rejected() {
        let (dev, _irq) = SerialDevice::new(Box::new(Sink::default())).unwrap();
        let mut state = dev.save();
        state.rx_fifo = vec![0; 65].into();
        assert!(matches!(
            SerialDevice::restore(&state, Box::new(Sink::default())),
            Err(SerialError::FifoOverfull { len: 65, .. })
        ));
    }
}
