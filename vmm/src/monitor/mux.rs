//! A chardev shared by the serial port and an HMP monitor (`-nographic`, `-serial mon:stdio`,
//! `mux=on`), switched with QEMU's escape keys: Ctrl-A c toggles, Ctrl-A x exits, Ctrl-A h
//! prints help, Ctrl-A Ctrl-A sends one Ctrl-A.

use super::{hmp, Controller, VmControl};

const CTRL_A: u8 = 0x01;

const HELP: &str = "\r\n\
C-a h    print this help\r\n\
C-a x    exit the VMM\r\n\
C-a c    switch between console and monitor\r\n\
C-a C-a  sends C-a\r\n";

/// Input routing state of one multiplexed chardev. Input starts on the serial console.
#[derive(Default)]
pub struct Mux {
    hmp: hmp::Session,
    monitor_focus: bool,
    escape: bool,
    greeted: bool,
}

/// Where a batch of typed bytes went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Bytes for the guest's UART.
    pub serial: Vec<u8>,
    /// Text to write back to the chardev (monitor output, help, prompts).
    pub echo: String,
}

impl Mux {
    /// `echo`: the chardev is a raw terminal, so the monitor echoes what is typed.
    pub fn new(echo: bool) -> Mux {
        Mux {
            hmp: if echo {
                hmp::Session::with_echo()
            } else {
                hmp::Session::default()
            },
            ..Mux::default()
        }
    }

    pub fn on_input<V: VmControl>(&mut self, c: &mut Controller<V>, bytes: &[u8]) -> Routed {
        let mut r = Routed::default();
        for &b in bytes {
            if std::mem::take(&mut self.escape) {
                match b {
                    b'c' => {
                        self.monitor_focus = !self.monitor_focus;
                        if self.monitor_focus {
                            if std::mem::replace(&mut self.greeted, true) {
                                r.echo.push_str("\r\n");
                                r.echo.push_str(hmp::PROMPT);
                            } else {
                                r.echo.push_str("\r\n");
                                r.echo.push_str(&hmp::banner());
                            }
                        }
                    }
                    b'x' => {
                        r.echo.push_str("vmm: terminated\r\n");
                        c.quit_from_ui();
                        return r;
                    }
                    b'h' | b'?' => r.echo.push_str(HELP),
                    CTRL_A => self.deliver(c, b, &mut r),
                    _ => {}
                }
                continue;
            }
            if b == CTRL_A {
                self.escape = true;
                continue;
            }
            self.deliver(c, b, &mut r);
            if c.exit().is_some() {
                return r;
            }
        }
        r
    }

    fn deliver<V: VmControl>(&mut self, c: &mut Controller<V>, b: u8, r: &mut Routed) {
        if self.monitor_focus {
            r.echo.push_str(&self.hmp.on_input(c, &[b]));
        } else {
            r.serial.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::RunState;
    use crate::monitor::fake::FakeVm;
    use crate::monitor::Exit;

    #[test]
    fn escape_keys_switch_and_exit() {
        let mut c = Controller::new(FakeVm::new(RunState::Running));
        let mut m = Mux::default();
        let r = m.on_input(&mut c, b"ab\x01\x01");
        assert_eq!(r.serial, b"ab\x01");
        let r = m.on_input(&mut c, b"\x01cinfo status\r");
        assert!(r.echo.contains("monitor - type 'help'"), "{:?}", r.echo);
        assert!(
            r.echo.ends_with("VM status: running\r\n(vmm) "),
            "{:?}",
            r.echo
        );
        assert!(r.serial.is_empty());
        let r = m.on_input(&mut c, b"\x01cz");
        assert_eq!(r.serial, b"z");
        let r = m.on_input(&mut c, b"\x01x");
        assert_eq!(r.echo, "vmm: terminated\r\n");
        assert_eq!(c.exit(), Some(Exit(0)));
    }
}
