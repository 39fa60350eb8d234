//! Per-vCPU work of a live update's pause, split over two threads.
//!
//! Each vCPU's state is written with its own KVM ioctls, microseconds each on the build
//! machines; vCPUs do not depend on one another. On an idle 2-core build machine, 8
//! `Vcpu::restore` calls take 0.92 ms on one thread and 0.51 ms on two (`cpr-vcpu-cost`);
//! in a live update, restore at 8 vCPUs went from 0.90 to 0.65 ms. Reading vCPUs that ran
//! is another matter (see `Machine::save_state`). A busy host makes the second thread start
//! late, so it only ever takes the second half.

/// Whether this process may run on more than one CPU (one system call, no file reads:
/// `available_parallelism` also reads cgroup files, too slow inside a pause).
fn two_cpus() -> bool {
    // SAFETY: cpu_set_t is plain data for which all-zero is a valid (empty) set; the call
    // writes at most size_of::<cpu_set_t>() bytes into it, and CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
            && libc::CPU_COUNT(&set) >= 2
    }
}

/// `f` of every item, in order: the first half on this thread, the second on a scoped
/// helper thread when there are at least two items and two CPUs. If the helper cannot be
/// started or dies, this thread does its half too.
pub(super) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 || !two_cpus() {
        return items.iter().map(&f).collect();
    }
    let (mine, theirs) = items.split_at(items.len() / 2);
    let f = &f;
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("vcpu-fanout".into())
            .spawn_scoped(s, move || theirs.iter().map(f).collect::<Vec<R>>());
        let mut out: Vec<R> = mine.iter().map(f).collect();
        let rest = helper
            .ok()
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| theirs.iter().map(f).collect());
        out.extend(rest);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_covers_every_item() {
        for n in 0..9 {
            let items: Vec<u32> = (0..n).collect();
            assert_eq!(
                map(&items, |i| i * 10),
                items.iter().map(|i| i * 10).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_second_thread_does_part_of_the_work_when_there_are_two_cpus() {
        let main = std::thread::current().id();
        let items = [0u8; 4];
        let threads = map(&items, |_| std::thread::current().id());
        assert_eq!(threads[0], main);
        if two_cpus() {
            assert_ne!(threads[3], main, "the second half ran here");
        } else {
            println!("one CPU: everything runs on the calling thread");
        }
    }
}
