//! Reading a process's CPU time and memory from `/proc`.
//!
//! CPU: fields 14 and 15 of `/proc/<pid>/stat` (`utime`, `stime`) are the CPU time of *all*
//! threads of the process, in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux, i.e. 10 ms).
//! Sampling before and after a run and dividing by the requests completed gives CPU per
//! request; over a 10 s run at thousands of requests per second the 10 ms tick is well under
//! the run's total, so the quantisation error stays small (it is larger in `--quick` runs).
//!
//! Memory: `VmRSS` (resident now) and `VmHWM` (the peak resident size so far) from
//! `/proc/<pid>/status`, in KiB.

use std::fs;
use std::io;

/// `utime + stime` in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// Parses `utime + stime` out of a `/proc/<pid>/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its *last* `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime 12.
    let mut fields = after.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of this process's reaped children (`getrusage(RUSAGE_CHILDREN)`), in clock
/// ticks. The load generator exits at the end of its run, so its CPU is only visible here.
pub fn children_ticks() -> u64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes to it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * ticks_per_second() / 1_000_000
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Resident memory of a process, KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size since the process started.
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_memory(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/<pid>/status"))
}

pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The executable a process is running (`/proc/<pid>/exe`), to confirm that a launcher
/// chain (`taskset`, a pyenv shim, a Python wrapper) ended in the binary being measured.
pub fn exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}
