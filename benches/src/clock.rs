//! A monotonic clock in plain nanoseconds.
//!
//! The open-loop schedule is a list of absolute instants that are handed to the kernel
//! (`timerfd` with `TFD_TIMER_ABSTIME`, see [`crate::timer`]), so the harness needs the same
//! clock the kernel uses — `CLOCK_MONOTONIC` — as a number it can do arithmetic on, which
//! `std::time::Instant` deliberately hides.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts a nanosecond instant on `CLOCK_MONOTONIC` to a `timespec`.
pub fn to_timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}
