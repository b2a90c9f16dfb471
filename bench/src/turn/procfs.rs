//! Reading CPU time and memory of a process (or one thread) from /proc, and raising the
//! open-file limit.

use std::io;

/// Which /proc entry to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcTarget {
    /// A whole process: /proc/PID/stat and /proc/PID/status.
    Process(i32),
    /// One thread of this process: /proc/self/task/TID/stat (memory is not per thread).
    OwnThread(i32),
}

/// Parses utime + stime (clock ticks) out of the contents of a /proc/.../stat file.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After ')' come fields 3 (state) ... ; utime is field 14, stime field 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Parses a "Key:   1234 kB" line of /proc/PID/status, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK)).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

impl ProcTarget {
    fn stat_path(self) -> String {
        match self {
            ProcTarget::Process(p) => format!("/proc/{p}/stat"),
            ProcTarget::OwnThread(t) => format!("/proc/self/task/{t}/stat"),
        }
    }

    /// CPU time (user + system) consumed so far, in nanoseconds (clock-tick resolution).
    pub fn cpu_ns(self) -> io::Result<u64> {
        let s = std::fs::read_to_string(self.stat_path())?;
        let ticks = parse_stat_cpu_ticks(&s)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable stat"))?;
        Ok(ticks * 1_000_000_000 / clk_tck())
    }

    /// (peak RSS, current RSS) in KiB; `None` for a thread.
    pub fn rss_kib(self) -> Option<(u64, u64)> {
        match self {
            ProcTarget::Process(p) => {
                let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                Some((
                    parse_status_kib(&s, "VmHWM")?,
                    parse_status_kib(&s, "VmRSS")?,
                ))
            }
            ProcTarget::OwnThread(_) => None,
        }
    }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: r holds limits the kernel gave us, soft raised to hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok(r.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let s = "1234 (turn server) x) S 1 1234 1234 0 -1 4194560 1000 0 0 0 \
                 250 75 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(s), Some(325));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tturnserver\nVmPeak:\t  999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn samples_own_process_and_thread() {
        let me = ProcTarget::Process(std::process::id() as i32);
        // Burn a little CPU so the counters are not all zero.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(me.cpu_ns().unwrap() > 0);
        let (hwm, rss) = me.rss_kib().unwrap();
        assert!(hwm >= rss && rss > 0);
        let th = ProcTarget::OwnThread(gettid());
        assert!(th.cpu_ns().unwrap() > 0);
        assert_eq!(th.rss_kib(), None);
        assert!(raise_nofile().unwrap() >= 1024);
    }
}
