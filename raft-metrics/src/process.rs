//! The process's own figures, read from Linux's `/proc/self`.

/// Resident memory, CPU time and open descriptors of this process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ProcessFigures {
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

/// Clock ticks per second of `/proc/self/stat`'s CPU times. Linux reports
/// them in USER_HZ, which is 100 on every architecture Linux supports
/// today.
const USER_HZ: f64 = 100.0;

/// The page size used by `/proc/self/statm`; 4 KiB on the platforms this
/// runs on (x86-64, and aarch64 with 4 KiB pages).
const PAGE_BYTES: u64 = 4096;

impl ProcessFigures {
    /// Reads the figures; `None` where `/proc` is not available.
    pub(crate) fn read() -> Option<ProcessFigures> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let cpu_seconds = cpu_seconds(&stat)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|entries| entries.count() as u64).unwrap_or(0);
        Some(ProcessFigures { resident_memory_bytes: resident_pages * PAGE_BYTES, cpu_seconds, open_fds })
    }
}

/// User plus system time from a `/proc/<pid>/stat` line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted
/// after its closing parenthesis: utime and stime are fields 14 and 15.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is at position 0, so field n is at n - 3.
    let user: u64 = fields.get(14 - 3)?.parse().ok()?;
    let system: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) node) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 8 0 100 0 0";
        assert_eq!(cpu_seconds(stat), Some(4.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn this_process_has_figures() {
        let figures = ProcessFigures::read().expect("/proc/self on Linux");
        assert!(figures.resident_memory_bytes > 0);
        assert!(figures.open_fds > 0);
    }
}
