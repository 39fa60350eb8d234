//! Raw mode for a terminal on stdin, as QEMU sets it for `stdio` chardevs: keys reach the
//! guest (or monitor) one by one, unechoed. Restored on drop.

use std::io::IsTerminal;

use nix::sys::termios::{
    tcgetattr, tcsetattr, ControlFlags, InputFlags, LocalFlags, OutputFlags, SetArg,
    SpecialCharacterIndices, Termios,
};

pub(super) struct RawTty {
    saved: Termios,
}

impl RawTty {
    /// Switches stdin to raw mode if it is a terminal. `signals` keeps Ctrl-C as SIGINT
    /// (QEMU's `signal=on`; off for a console shared with the monitor).
    pub(super) fn enter(signals: bool) -> Option<RawTty> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(&stdin).ok()?;
        let mut t = saved.clone();
        t.input_flags &= !(InputFlags::IGNBRK
            | InputFlags::BRKINT
            | InputFlags::PARMRK
            | InputFlags::ISTRIP
            | InputFlags::INLCR
            | InputFlags::IGNCR
            | InputFlags::ICRNL
            | InputFlags::IXON);
        t.output_flags |= OutputFlags::OPOST;
        t.local_flags &=
            !(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ICANON | LocalFlags::IEXTEN);
        if !signals {
            t.local_flags &= !LocalFlags::ISIG;
        }
        t.control_flags &= !(ControlFlags::CSIZE | ControlFlags::PARENB);
        t.control_flags |= ControlFlags::CS8;
        t.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        tcsetattr(&stdin, SetArg::TCSANOW, &t).ok()?;
        Some(RawTty { saved })
    }
}

impl Drop for RawTty {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
