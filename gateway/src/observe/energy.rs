//! The energy estimate of local compute: joules per CPU-second, measured from the RAPL package
//! counters (`/sys/class/powercap/intel-rapl:N/energy_uj`) against the process's CPU time where
//! they can be read, else the configured watts per busy core.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Where the kernel exposes RAPL.
pub const POWERCAP: &str = "/sys/class/powercap";

/// Shortest CPU time between two RAPL readings that calibrates (less is noise).
const MIN_CPU_NS: u64 = 50_000_000;

/// Joules per CPU-second, and where the figure comes from.
#[derive(Debug)]
pub struct Energy {
    watts_per_core: f64,
    rapl: Option<Rapl>,
    /// The measured figure (f64 bits), 0 until RAPL calibrated it.
    measured: AtomicU64,
}

/// The package counters and the last reading.
#[derive(Debug)]
struct Rapl {
    packages: Vec<Package>,
    last: Mutex<Option<(u64, u64)>>,
}

#[derive(Debug)]
struct Package {
    energy: PathBuf,
    /// Where the counter wraps, µJ.
    range: u64,
}

impl Energy {
    /// `watts_per_core` alone (no RAPL).
    pub fn fixed(watts_per_core: f64) -> Self {
        Self {
            watts_per_core,
            rapl: None,
            measured: AtomicU64::new(0),
        }
    }

    /// RAPL under `root` where its package counters are readable, with `watts_per_core` until
    /// (or unless) they calibrate.
    pub fn with_rapl(watts_per_core: f64, root: &Path) -> Self {
        let mut energy = Self::fixed(watts_per_core);
        energy.rapl = Rapl::open(root);
        energy
    }

    /// Whether RAPL counters were found.
    pub fn has_rapl(&self) -> bool {
        self.rapl.is_some()
    }

    /// `rapl` once the counters calibrated, else `watts_per_core`.
    pub fn source(&self) -> &'static str {
        if self.measured.load(Ordering::Relaxed) != 0 {
            "rapl"
        } else {
            "watts_per_core"
        }
    }

    /// Joules one CPU-second costs now.
    pub fn joules_per_cpu_second(&self) -> f64 {
        match f64::from_bits(self.measured.load(Ordering::Relaxed)) {
            m if m > 0.0 => m,
            _ => self.watts_per_core,
        }
    }

    /// The energy of `cpu_seconds` of local compute, J.
    pub fn joules(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * self.joules_per_cpu_second()
    }

    /// Reads the counters and the process's CPU clock, and updates the figure from the change
    /// since the last reading (call every few seconds).
    pub fn sample(&self) {
        let Some(rapl) = &self.rapl else { return };
        let Some(energy_uj) = rapl.read() else { return };
        let cpu_ns = tandem_kernels::cpu::process_cpu_ns();
        if let Some(j) = rapl.advance(energy_uj, cpu_ns) {
            self.measured.store(j.to_bits(), Ordering::Relaxed);
        }
    }
}

impl Rapl {
    /// The package-level zones (`intel-rapl:0`, not its sub-zones `intel-rapl:0:0`).
    fn open(root: &Path) -> Option<Self> {
        let mut packages = Vec::new();
        for entry in std::fs::read_dir(root).ok()?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
                continue;
            }
            let dir = entry.path();
            let energy = dir.join("energy_uj");
            if std::fs::read_to_string(&energy).is_err() {
                continue; // unreadable without privileges on most kernels
            }
            let range = std::fs::read_to_string(dir.join("max_energy_range_uj"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX);
            packages.push(Package { energy, range });
        }
        (!packages.is_empty()).then_some(Self {
            packages,
            last: Mutex::new(None),
        })
    }

    /// The packages' counters summed, µJ (each unwrapped against its last value by `advance`).
    fn read(&self) -> Option<Vec<u64>> {
        self.packages
            .iter()
            .map(|p| {
                std::fs::read_to_string(&p.energy)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .collect()
    }

    /// Joules per CPU-second between the last reading and this one, when enough CPU passed.
    fn advance(&self, energy_uj: Vec<u64>, cpu_ns: u64) -> Option<f64> {
        let total: u64 = energy_uj.iter().sum();
        let mut last = self.last.lock();
        let Some((prev_total, prev_cpu)) = *last else {
            *last = Some((total, cpu_ns));
            return None;
        };
        let d_cpu = cpu_ns.saturating_sub(prev_cpu);
        if d_cpu < MIN_CPU_NS {
            return None;
        }
        *last = Some((total, cpu_ns));
        // A counter that wrapped reads lower than before: add its range back.
        let d_energy = if total >= prev_total {
            total - prev_total
        } else {
            let range = self
                .packages
                .iter()
                .map(|p| p.range)
                .min()
                .unwrap_or(u64::MAX);
            (range - prev_total).saturating_add(total)
        };
        Some(d_energy as f64 / 1e6 / (d_cpu as f64 / 1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rapl_the_configured_watts_give_the_joules() {
        let e = Energy::with_rapl(12.0, Path::new("/nonexistent/powercap"));
        assert!(!e.has_rapl());
        assert_eq!(e.source(), "watts_per_core");
        assert_eq!(e.joules(0.5), 6.0);
    }

    #[test]
    fn rapl_counters_calibrate_joules_per_cpu_second() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("intel-rapl:0");
        std::fs::create_dir_all(pkg.join("intel-rapl:0:0")).unwrap();
        std::fs::write(pkg.join("energy_uj"), "1000000\n").unwrap();
        std::fs::write(pkg.join("max_energy_range_uj"), "262143328850\n").unwrap();
        // A sub-zone is part of its package, never counted twice.
        std::fs::create_dir_all(dir.path().join("intel-rapl:0:0")).unwrap();
        std::fs::write(dir.path().join("intel-rapl:0:0/energy_uj"), "5\n").unwrap();
        let e = Energy::with_rapl(10.0, dir.path());
        assert!(e.has_rapl());
        let rapl = e.rapl.as_ref().unwrap();
        assert_eq!(rapl.read(), Some(vec![1_000_000]));
        assert_eq!(rapl.advance(vec![1_000_000], 1_000_000_000), None);
        // Too little CPU in between: no figure yet.
        assert_eq!(rapl.advance(vec![1_000_100], 1_010_000_000), None);
        // 30 J over 2 CPU-seconds.
        assert_eq!(rapl.advance(vec![31_000_000], 3_000_000_000), Some(15.0));
        // The counter wrapped: its range is added back.
        let wrapped = rapl.advance(vec![1_000_000], 4_000_000_000).unwrap();
        assert!((wrapped - (262_143_328_850.0 - 31_000_000.0 + 1_000_000.0) / 1e6).abs() < 1e-6);
    }
}
