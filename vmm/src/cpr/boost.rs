//! Scheduling boost for the few milliseconds of a transfer's pause.
//!
//! The pause is a ping-pong between two processes (state, restored, go): each message wakes
//! the other side's main thread. On a busy host every such wake-up can wait a whole CFS time
//! slice, which costs more than all the work in the pause. While the guest is paused, the
//! main thread of each side therefore runs SCHED_FIFO (priority 1, the lowest real-time one)
//! with SCHED_RESET_ON_FORK, so threads it creates meanwhile (the new process's vCPU threads)
//! start as ordinary SCHED_OTHER threads. The previous policy returns on drop. Best effort:
//! without CAP_SYS_NICE the boost is simply not taken.

/// Environment variable that turns the boost off (`VMM_CPR_NO_BOOST=1`).
pub const NO_BOOST_ENV: &str = "VMM_CPR_NO_BOOST";

/// The calling thread's scheduling policy, raised until drop.
pub struct Boost {
    previous: Option<(libc::c_int, libc::sched_param)>,
}

impl Boost {
    /// Raises the calling thread to SCHED_FIFO 1 if allowed.
    pub fn realtime() -> Boost {
        if std::env::var_os(NO_BOOST_ENV).is_some() {
            return Boost { previous: None };
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; both calls only read its scheduling settings
        // into `param`, which we own.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: as above.
        if policy < 0 || unsafe { libc::sched_getparam(0, &mut param) } < 0 {
            return Boost { previous: None };
        }
        let fifo = libc::sched_param { sched_priority: 1 };
        // SAFETY: changes only the calling thread's policy; `fifo` is a valid sched_param.
        let ok = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &fifo)
        } == 0;
        Boost {
            previous: ok.then_some((policy, param)),
        }
    }

    /// Whether the boost was taken.
    #[cfg(test)]
    pub fn active(&self) -> bool {
        self.previous.is_some()
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous.take() {
            // SAFETY: restores the calling thread's own policy saved by `realtime`. Best
            // effort: lowering one's own priority is always allowed.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boost_is_undone_and_not_inherited() {
        // SAFETY: reads the calling thread's policy.
        let before = unsafe { libc::sched_getscheduler(0) };
        {
            let b = Boost::realtime();
            if b.active() {
                // SAFETY: as above.
                let now = unsafe { libc::sched_getscheduler(0) };
                assert_eq!(now & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO);
                let child = std::thread::spawn(|| {
                    // SAFETY: as above, in the new thread.
                    unsafe { libc::sched_getscheduler(0) }
                })
                .join()
                .unwrap();
                assert_eq!(child, libc::SCHED_OTHER);
            }
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, before);
    }
}
