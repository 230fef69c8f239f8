//! A precise async sleep built on `timerfd`.
//!
//! Tokio's timer wheel has one-millisecond granularity and its driver parks in `epoll_wait`
//! with a millisecond timeout, so `tokio::time::sleep_until` wakes anywhere from 0 to ~1 ms
//! late. The open-loop mode measures latency from the *intended* send time, so every bit of
//! timer lateness would be reported as request latency — at a few hundred microseconds per
//! request through a proxy, a uniform 0–1 ms error would drown the signal. A `timerfd` armed
//! with an absolute `CLOCK_MONOTONIC` deadline is an hrtimer (no timer slack applied) and
//! wakes the runtime's epoll within microseconds, without spinning a core that the upstream
//! shares.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::clock::{now_ns, to_timespec};

/// One reusable one-shot timer. Not `Sync`-shared: each load worker owns its own.
pub struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    /// Creates a non-blocking `timerfd` on `CLOCK_MONOTONIC` registered with the runtime.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is checked before it is owned.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` is valid and open, moves into the `AsyncFd` and so stays the
        // same descriptor until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Waits until `deadline_ns` (on [`now_ns`]'s clock). Returns at once if it has passed.
    pub async fn sleep_until(&self, deadline_ns: u64) -> io::Result<()> {
        if now_ns() >= deadline_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: to_timespec(0),
            it_value: to_timespec(deadline_ns),
        };
        // SAFETY: valid descriptor and pointers; a null `old_value` is allowed.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                let mut expirations = 0u64;
                // SAFETY: reading 8 bytes into a u64 is exactly what timerfd expects.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        (&mut expirations as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => return result,
                // Spurious readiness: readiness was cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}
