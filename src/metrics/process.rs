//! The process's own CPU time, memory, file descriptors and start time, read from `/proc` at
//! each scrape under the names every Prometheus client uses (`process_*`), so stock dashboards
//! and alerts work unchanged. Elsewhere than Linux the families are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 in the kernel's ABI on every
/// architecture ferry ships for.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub struct ProcessCollector;

/// One reading of the process.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_memory_bytes: Option<i64>,
    virtual_memory_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl Reading {
    fn now() -> Reading {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|text| parse_stat(&text));
        let boot_time = read("/proc/stat").and_then(|text| parse_boot_time(&text));
        let status = read("/proc/self/status").unwrap_or_default();
        Reading {
            cpu_seconds: stat.map(|stat| stat.cpu_ticks as f64 / TICKS_PER_SECOND),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(stat, boot)| boot as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND),
            resident_memory_bytes: status_kib(&status, "VmRSS").map(|kib| kib * 1024),
            virtual_memory_bytes: status_kib(&status, "VmSize").map(|kib| kib * 1024),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as i64),
            max_fds: read("/proc/self/limits").and_then(|text| parse_max_open_files(&text)),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        if let Some(seconds) = reading.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let help = "User and system CPU time the process has used.";
            let unit = Some(&Unit::Seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                help,
                unit,
                counter.metric_type(),
            )?)?;
        }
        let help = "When the process started, in seconds since the Unix epoch.";
        encode_gauge(
            &mut encoder,
            "process_start_time",
            help,
            Some(Unit::Seconds),
            reading.start_time_seconds,
        )?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                reading.resident_memory_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size.",
                Some(Unit::Bytes),
                reading.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                None,
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "The limit on open file descriptors.",
                None,
                reading.max_fds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            encode_gauge(&mut encoder, name, help, unit, value)?;
        }
        Ok(())
    }
}

/// One gauge family of one sample; nothing when the value could not be read.
fn encode_gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: Option<N>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let Some(value) = value else { return Ok(()) };
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)
}

/// User plus system CPU seconds process `pid` has used so far; `None` when it cannot be read.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&text)?.cpu_ticks as f64 / TICKS_PER_SECOND)
}

/// Process `pid`'s resident memory now and at its peak, in KiB.
pub fn memory_kib_of(pid: u32) -> Option<(i64, i64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kib(&status, "VmRSS")?, status_kib(&status, "VmHWM")?))
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    /// User plus system time.
    cpu_ticks: u64,
    /// Since boot.
    start_ticks: u64,
}

/// CPU and start time from `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    // Field 3 (state) is the first after the name: field n sits at n - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// Seconds since the epoch at boot, from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS:` then a tab, `1952 kB`.
fn status_kib(status: &str, key: &str) -> Option<i64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; `None` when unlimited.
fn parse_max_open_files(text: &str) -> Option<i64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_start_ticks_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194304 96 0 0 0 250 50 0 0 20 0 7 0 73770 3133440 361 18446744073709551615 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 73770
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
    }

    #[test]
    fn reads_boot_time_memory_and_the_fd_limit() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796142045\nprocesses 9\n"),
            Some(1796142045)
        );
        let status = "Name:\tferry\nVmSize:\t    3892 kB\nVmRSS:\t    1952 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(1952));
        assert_eq!(status_kib(status, "VmSize"), Some(3892));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let reading = Reading::now();
        assert!(reading.resident_memory_bytes.is_some_and(|bytes| bytes > 0));
        assert!(reading.open_fds.is_some_and(|fds| fds > 0));
        assert!(reading.cpu_seconds.is_some());
        let started = reading.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(
            started > now - 86_400.0 * 365.0 && started <= now + 1.0,
            "{started}"
        );
    }
}
