//! Process CPU time from procfs, read by the overhead bench and its nginx peer alike.

use std::time::Duration;

/// The command name and CPU ticks (utime + stime) of a procfs `stat` line.
pub(super) fn stat_cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    // "pid (comm) state ..." where comm may hold spaces: split after the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let ticks = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Some((stat.get(open + 1..close)?, ticks))
}

/// procfs CPU ticks as time.
pub(super) fn ticks_to_duration(ticks: u64) -> Duration {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    Duration::from_secs_f64(ticks as f64 / ticks_per_s)
}
