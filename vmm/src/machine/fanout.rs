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

/// Runs `prepare` on this thread, then makes items one at a time (`make(&p, 0)`,
/// `make(&p, 1)`, ...), each given to `work` as soon as it exists: on a helper thread
/// while this one makes the next, and on this one too once all are made. Returns what
/// `prepare` gave and the items in order with their work's outcome; stops at the first
/// error. `lost(i)` is the error for item `i` if the helper died holding it.
///
/// The helper is started before `prepare` and runs `warm_up` first, then polls for items
/// instead of sleeping: on the build machines a sleeping thread on the other CPU takes
/// ~0.2 ms to wake, longer than an item's work. With one item or one CPU, everything runs
/// on this thread, and `warm_up` is not run (the work cannot need it).
pub(super) fn pipeline<P, T: Send, W: Send, E>(
    count: usize,
    prepare: impl FnOnce() -> Result<P, E>,
    warm_up: impl FnOnce() + Send,
    mut make: impl FnMut(&P, usize) -> Result<T, E>,
    work: impl Fn(&T) -> W + Sync,
    lost: impl Fn(usize) -> E,
) -> Result<(P, Vec<(T, W)>), E> {
    use std::sync::mpsc::{self, TryRecvError};
    use std::sync::Mutex;
    let inline = |p: P, make: &mut dyn FnMut(&P, usize) -> Result<T, E>| {
        let out = (0..count)
            .map(|i| {
                make(&p, i).map(|t| {
                    let w = work(&t);
                    (t, w)
                })
            })
            .collect::<Result<Vec<_>, E>>()?;
        Ok((p, out))
    };
    if count < 2 || !two_cpus() {
        return inline(prepare()?, &mut make);
    }
    let (tx, rx) = mpsc::channel::<(usize, T)>();
    // Both threads take items from it at the end: whoever gets the lock takes the next.
    let rx = Mutex::new(rx);
    let done: Mutex<Vec<(usize, T, W)>> = Mutex::new(Vec::with_capacity(count));
    let take = || super::devices::lock(&rx).try_recv();
    let (work, done_ref) = (&work, &done);
    let scoped = std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("vcpu-pipeline".into())
            .spawn_scoped(s, move || {
                warm_up();
                loop {
                    match take() {
                        Ok((i, t)) => {
                            let w = work(&t);
                            super::devices::lock(done_ref).push((i, t, w));
                        }
                        // Lets whatever else wants this CPU run while polling.
                        Err(TryRecvError::Empty) => std::thread::yield_now(),
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            });
        let Ok(helper) = helper else {
            return Err(prepare);
        };
        let p = match prepare() {
            Ok(p) => p,
            Err(e) => return Ok((Err(e), Ok(0))),
        };
        let mut made = Ok(0);
        for i in 0..count {
            match make(&p, i) {
                Ok(t) => {
                    // The receiver lives until the scope ends: the send cannot fail.
                    let _ = tx.send((i, t));
                    made = Ok(i + 1);
                }
                Err(e) => {
                    made = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        while let Ok((i, t)) = take() {
            let w = work(&t);
            super::devices::lock(&done).push((i, t, w));
        }
        let _ = helper.join();
        Ok((Ok(p), made))
    });
    let (p, made) = match scoped {
        Ok((p, made)) => (p?, made?),
        // No helper could be started: everything here (the work needs no warm-up).
        Err(prepare) => return inline(prepare()?, &mut make),
    };
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _, _)| *i);
    if let Some(missing) = (0..made).find(|i| done.get(*i).map(|d| d.0) != Some(*i)) {
        return Err(lost(missing));
    }
    Ok((p, done.into_iter().map(|(_, t, w)| (t, w)).collect()))
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

    #[test]
    fn pipeline_works_every_item_in_order_and_stops_at_a_make_error() {
        for n in 0..9 {
            let out = pipeline(
                n,
                || Ok::<_, String>(3),
                || {},
                |p, i| Ok(i * p),
                |t| t + 1,
                |i| format!("lost {i}"),
            );
            let want: Vec<_> = (0..n).map(|i| (i * 3, i * 3 + 1)).collect();
            assert_eq!(out, Ok((3, want)));
        }
        let worked = std::sync::atomic::AtomicUsize::new(0);
        let out = pipeline(
            6,
            || Ok(()),
            || {},
            |_, i| {
                if i == 4 {
                    Err(format!("make {i} failed"))
                } else {
                    Ok(i)
                }
            },
            |_| worked.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            |i| format!("lost {i}"),
        );
        assert_eq!(out, Err("make 4 failed".to_string()));
        assert_eq!(
            worked.into_inner(),
            4,
            "items made before the error are worked"
        );
    }
}
