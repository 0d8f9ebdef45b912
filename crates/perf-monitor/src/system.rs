//! System statistics: this process's CPU and memory, the host's memory and load, sampled on demand.

use std::time::{Duration, Instant};

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};

/// One sample of the host and of this process.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SystemStats {
    /// CPU used by this process since the previous sample, in percent of the whole machine
    /// (all cores busy = 100).
    pub process_cpu_percent: f64,
    /// Resident memory of this process, in bytes.
    pub process_rss_bytes: u64,
    /// Memory in use on the host (total minus available), in bytes.
    pub memory_used_bytes: u64,
    /// The host's total memory, in bytes.
    pub memory_total_bytes: u64,
    /// `memory_used_bytes / memory_total_bytes`, in percent.
    pub memory_percent: f64,
    /// The host's 1, 5 and 15 minute load averages (0 where the platform has none).
    pub load_average: [f64; 3],
    /// Logical CPUs of the host.
    pub cpu_count: usize,
    /// How long this process has run.
    #[serde(with = "humantime_serde")]
    pub uptime: Duration,
}

/// Samples [`SystemStats`] with sysinfo.
///
/// Each [`sample`](Self::sample) refreshes only this process (its CPU time and memory), the host's
/// memory and the load average, so it is cheap (tens of microseconds on Linux) but blocking: it
/// reads `/proc`. Call it from a blocking thread, about once a second.
///
/// CPU use is the difference of this process's CPU time between two samples divided by the wall
/// time between them, so the first sample reports 0 %. The kernel counts CPU time in ticks of
/// 10 ms, so samples much closer than a second apart give coarse figures.
///
/// The uptime is the process's run time as sysinfo reads it when the sampler is created (whole
/// seconds, from the process start time) plus the monotonic time elapsed since then.
///
/// On a platform sysinfo does not support, every figure but `cpu_count` and `uptime` is 0.
#[derive(Debug)]
pub struct SystemSampler {
    /// `None` where sysinfo does not support the platform.
    system: Option<System>,
    pid: Pid,
    cpu_count: usize,
    created: Instant,
    uptime_at_creation: Duration,
    /// When the previous sample was taken and this process's CPU time then, in milliseconds.
    previous_cpu: Option<(Instant, u64)>,
}

impl SystemSampler {
    /// Creates a sampler; reads the CPU list and this process's start time once.
    pub fn new() -> Self {
        let created = Instant::now();
        let pid = Pid::from_u32(std::process::id());
        let mut system = System::new().ok();
        let mut cpu_count = 0;
        let mut uptime_at_creation = Duration::ZERO;
        if let Some(system) = system.as_mut() {
            system.refresh_cpu_list(CpuRefreshKind::nothing());
            cpu_count = system.cpus().len();
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().without_tasks(),
            );
            if let Some(process) = system.process(pid) {
                uptime_at_creation = Duration::from_secs(process.run_time());
            }
        }
        if cpu_count == 0 {
            cpu_count = std::thread::available_parallelism().map_or(1, usize::from);
        }
        Self { system, pid, cpu_count, created, uptime_at_creation, previous_cpu: None }
    }

    /// Takes a sample (blocking: reads `/proc` on Linux).
    pub fn sample(&mut self) -> SystemStats {
        let now = Instant::now();
        let mut stats = SystemStats {
            process_cpu_percent: 0.0,
            process_rss_bytes: 0,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            memory_percent: 0.0,
            load_average: [0.0; 3],
            cpu_count: self.cpu_count,
            uptime: self.uptime_at_creation + now.duration_since(self.created),
        };
        let Some(system) = self.system.as_mut() else {
            return stats;
        };

        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory().without_tasks(),
        );
        if let Some(process) = system.process(self.pid) {
            stats.process_rss_bytes = process.memory();
            let cpu_ms = process.accumulated_cpu_time();
            if let Some((then, then_cpu_ms)) = self.previous_cpu {
                stats.process_cpu_percent = cpu_percent(
                    cpu_ms.saturating_sub(then_cpu_ms),
                    now.duration_since(then),
                    self.cpu_count,
                );
            }
            self.previous_cpu = Some((now, cpu_ms));
        }

        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        stats.memory_total_bytes = system.total_memory();
        stats.memory_used_bytes = system.used_memory().min(stats.memory_total_bytes);
        if stats.memory_total_bytes > 0 {
            stats.memory_percent =
                stats.memory_used_bytes as f64 / stats.memory_total_bytes as f64 * 100.0;
        }

        if let Ok(load) = System::load_average() {
            stats.load_average = [load.one, load.five, load.fifteen];
        }
        stats
    }
}

impl Default for SystemSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// CPU time used over a wall-time interval, in percent of `cpu_count` CPUs, within 0..=100.
fn cpu_percent(cpu_ms: u64, wall: Duration, cpu_count: usize) -> f64 {
    let capacity_ms = wall.as_secs_f64() * 1_000.0 * cpu_count.max(1) as f64;
    if capacity_ms <= 0.0 {
        return 0.0;
    }
    (cpu_ms as f64 / capacity_ms * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_sane_values() {
        let mut sampler = SystemSampler::new();
        let stats = sampler.sample();
        assert!(stats.process_rss_bytes > 0, "{stats:?}");
        assert!(stats.memory_total_bytes > 0, "{stats:?}");
        assert!(stats.memory_used_bytes > 0, "{stats:?}");
        assert!(stats.memory_used_bytes <= stats.memory_total_bytes, "{stats:?}");
        assert!((0.0..=100.0).contains(&stats.memory_percent), "{stats:?}");
        assert_eq!(stats.process_cpu_percent, 0.0, "the first sample has nothing to compare with");
        assert!(stats.cpu_count >= 1, "{stats:?}");
        assert!(stats.load_average.iter().all(|load| *load >= 0.0), "{stats:?}");

        let later = sampler.sample();
        assert!(later.uptime > stats.uptime, "{stats:?} then {later:?}");
        assert!((0.0..=100.0).contains(&later.process_cpu_percent), "{later:?}");
    }

    #[test]
    fn cpu_use_shows_after_burning_cpu_between_samples() {
        let mut sampler = SystemSampler::new();
        sampler.sample();
        let start = Instant::now();
        let mut x = 1u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        let stats = sampler.sample();
        assert!(stats.process_cpu_percent > 0.0, "{stats:?}");
        assert!(stats.process_cpu_percent <= 100.0, "{stats:?}");
    }

    #[test]
    fn cpu_percent_is_of_the_whole_machine() {
        assert_eq!(cpu_percent(500, Duration::from_secs(1), 2), 25.0);
        assert_eq!(cpu_percent(1_000, Duration::from_secs(1), 1), 100.0);
        assert_eq!(cpu_percent(10, Duration::from_millis(1), 2), 100.0, "clamped");
        assert_eq!(cpu_percent(10, Duration::ZERO, 2), 0.0);
        assert_eq!(cpu_percent(10, Duration::from_secs(1), 0), 1.0, "0 CPUs counts as one");
    }

    #[test]
    fn uptime_serializes_as_human_time() {
        let stats = SystemSampler::new().sample();
        let json = serde_json::to_value(stats).expect("serializes");
        let uptime = json["uptime"].as_str().expect("uptime is a string");
        assert!(humantime_serde::re::humantime::parse_duration(uptime).is_ok(), "{uptime}");
    }
}
