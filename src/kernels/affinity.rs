//! One CPU per pool thread. Left to itself, the scheduler may run two of the pool's
//! threads on one CPU for a while after the other CPU sat idle (on this project's 2-vCPU
//! VM, whose kernel has a `sched_vcpu_pack` option, it evidently did), and a two-thread 1 x 128
//! forward then runs at one thread's speed (docs/results.md, "Issue 17, 6 Dec 2026 (session
//! 19)"). Pinned, the threads cannot share a CPU.
//!
//! `COREFOCUS_PIN_THREADS`: `auto` (the default) pins only when the pool has one thread
//! per CPU the process may use, at least two: then no thread has another CPU to move to
//! that would not hold one of its siblings, and two processes that each use every CPU
//! share them as before. With fewer threads than CPUs pinning could stack several
//! processes on the same CPUs (the classic OpenMP affinity trap), so `auto` leaves them
//! free; `off` (or `0`) never pins. Training leaves them free too ([`leave_threads_free`]).
//! The price of pinning: with another busy process on one of the CPUs, a pinned pass
//! cannot move off it (1 x 128 median 28-29 ms pinned against 20-21 ms free beside a
//! one-thread CPU hog; docs/results.md, session 19).

use std::sync::OnceLock;

/// Whether every pool thread was pinned: false before the first pass ([`pin_pool_threads`]),
/// when it decided not to pin or was told not to ([`leave_threads_free`]), or when the
/// kernel refused a thread.
pub fn pool_threads_pinned() -> bool {
    *PINNED.get().unwrap_or(&false)
}

static PINNED: OnceLock<bool> = OnceLock::new();

/// Leaves the pool's threads free for the rest of the process, unless a pass has pinned
/// them already: training calls it first. Its long passes keep both cores busy, so
/// pinning gains nothing there (the same step time, quiet machine), while another busy
/// process on one of the CPUs cost a pinned step 15% (docs/results.md, session 19).
pub fn leave_threads_free() {
    let _ = PINNED.set(false);
}

/// Pins the current rayon pool's threads, once per process (see the module doc). Call
/// from outside the pool; later calls return the first call's outcome.
pub fn pin_pool_threads() -> bool {
    *PINNED.get_or_init(|| {
        if !pinning_wanted() {
            return false;
        }
        let Some(allowed) = allowed_cpus() else {
            return false;
        };
        let Some(cpus) = cpu_per_thread(&allowed, rayon::current_num_threads()) else {
            return false;
        };
        // `broadcast` runs once on every pool thread and waits for all of them.
        let pinned = rayon::broadcast(|ctx| pin_this_thread(cpus[ctx.index()]));
        pinned.iter().all(|&ok| ok)
    })
}

fn pinning_wanted() -> bool {
    match std::env::var("COREFOCUS_PIN_THREADS") {
        Err(_) => true,
        Ok(v) => match v.trim() {
            "auto" | "" => true,
            "off" | "0" => false,
            other => {
                eprintln!(
                    "corefocus: COREFOCUS_PIN_THREADS={other:?} is neither auto nor off; \
                     using auto"
                );
                true
            }
        },
    }
}

/// The CPU for each of `threads` pool threads: the allowed CPUs in order when there is
/// exactly one per thread and at least two, otherwise `None` (leave the threads free).
fn cpu_per_thread(allowed: &[usize], threads: usize) -> Option<Vec<usize>> {
    (threads >= 2 && allowed.len() == threads).then(|| allowed.to_vec())
}

/// The CPUs this process may run on (its affinity mask: taskset, cgroup cpusets).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: `set` is a plain bit array that the call fills; the size passed is its own.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// Restricts the calling thread (not the process) to `cpu`; false if the kernel refused.
#[cfg(target_os = "linux")]
fn pin_this_thread(cpu: usize) -> bool {
    // SAFETY: as above; pid 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

#[cfg(not(target_os = "linux"))]
fn pin_this_thread(_cpu: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pins_only_one_thread_per_allowed_cpu() {
        assert_eq!(cpu_per_thread(&[0, 1], 2), Some(vec![0, 1]));
        assert_eq!(cpu_per_thread(&[2, 5, 7], 3), Some(vec![2, 5, 7]));
        // Fewer threads than CPUs: other processes may pin to the same first CPUs.
        assert_eq!(cpu_per_thread(&[0, 1, 2, 3], 2), None);
        // More threads than CPUs, or one thread: nothing to keep apart.
        assert_eq!(cpu_per_thread(&[0, 1], 4), None);
        assert_eq!(cpu_per_thread(&[3], 1), None);
    }

    /// The mask read back is the one the kernel reports in /proc (`0-1,4` ranges).
    #[test]
    fn the_process_sees_its_allowed_cpus() {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/thread-self/status");
        let mut want = Vec::new();
        for part in list.trim().split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            want.extend(lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap());
        }
        assert_eq!(
            allowed_cpus().expect("sched_getaffinity works on Linux"),
            want
        );
    }

    #[test]
    fn a_thread_can_be_pinned_to_an_allowed_cpu() {
        let cpu = allowed_cpus().unwrap()[0];
        let pinned = std::thread::spawn(move || {
            let ok = pin_this_thread(cpu);
            (ok, allowed_cpus().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(pinned, (true, vec![cpu]));
        // The test thread itself kept its mask.
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
