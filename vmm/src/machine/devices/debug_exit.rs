//! Debug-exit port for tests: a guest writes one byte N to port 0x501 and the VMM reports
//! `MachineEvent::DebugExit(N)` (the front end exits with status N). Unlike QEMU's
//! isa-debug-exit the code is N itself, not (N << 1) | 1. The device has no state to save.

pub const DEBUG_EXIT_PORT: u16 = 0x501;

#[derive(Debug, Default)]
pub struct DebugExit;

impl DebugExit {
    /// The exit code a write asks for: the first byte written (any access width).
    pub fn write(&self, data: &[u8]) -> Option<u8> {
        data.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_is_the_code() {
        assert_eq!(DebugExit.write(&[42]), Some(42));
        assert_eq!(DebugExit.write(&[7, 0]), Some(7));
        assert_eq!(DebugExit.write(&[]), None);
    }
}
