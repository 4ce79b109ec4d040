//! CPU feature detection, done once and cached, the kernel path chosen from it, and the calling
//! thread's CPU clock (what a computation cost, as opposed to how long it took).

use std::sync::OnceLock;

/// SIMD features relevant to the kernels, detected at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// x86 AVX2.
    pub avx2: bool,
    /// x86 FMA3.
    pub fma: bool,
    /// x86 F16C (half-float conversion).
    pub f16c: bool,
    /// x86 AVX-512 Foundation.
    pub avx512f: bool,
    /// x86 AVX-512 byte/word instructions.
    pub avx512bw: bool,
    /// x86 AVX-512 vector-length extensions (AVX-512 instructions on 256-bit registers).
    pub avx512vl: bool,
    /// x86 AVX-512 VNNI (int8 dot products).
    pub avx512vnni: bool,
    /// x86 AVX-VNNI (VEX-encoded 256-bit int8 dot products).
    pub avxvnni: bool,
    /// x86 AVX-512 BF16 (bfloat16 dot products).
    pub avx512bf16: bool,
    /// aarch64 Advanced SIMD.
    pub neon: bool,
    /// aarch64 int8 dot product instructions.
    pub dotprod: bool,
}

/// The kernel implementation chosen for this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Portable Rust, the reference for every other path.
    Scalar,
    /// AVX2 + FMA + F16C with `vpmaddubsw`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 + AVX-VNNI `vpdpbusd` (VEX, 16 registers).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX-512 BW/VL on 256-bit vectors (32 registers) with `vpmaddubsw`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 BW/VL + AVX-512 VNNI `vpdpbusd` (32 registers).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// aarch64 NEON.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Path {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Path::AvxVnni => "avx2+avxvnni",
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vnni => "avx512+vnni",
            #[cfg(target_arch = "aarch64")]
            Path::Neon => "neon",
        }
    }

    /// Every path this machine can run, best first, ending with `Scalar`.
    pub(crate) fn available() -> Vec<Path> {
        let f = cpu_features();
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let base = f.avx2 && f.fma && f.f16c;
            let avx512 = base && f.avx512f && f.avx512bw && f.avx512vl;
            if avx512 && f.avx512vnni {
                v.push(Path::Avx512Vnni);
            }
            if avx512 {
                v.push(Path::Avx512);
            }
            if base && f.avxvnni {
                v.push(Path::AvxVnni);
            }
            if base {
                v.push(Path::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if f.neon {
            v.push(Path::Neon);
        }
        let _ = f;
        v.push(Path::Scalar);
        v
    }
}

/// Features of the CPU this process runs on (detected once).
pub fn cpu_features() -> &'static CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    CpuFeatures {
        avx2: std::arch::is_x86_feature_detected!("avx2"),
        fma: std::arch::is_x86_feature_detected!("fma"),
        f16c: std::arch::is_x86_feature_detected!("f16c"),
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
        avx512vl: std::arch::is_x86_feature_detected!("avx512vl"),
        avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
        avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
        avx512bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
        neon: false,
        dotprod: false,
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> CpuFeatures {
    CpuFeatures {
        neon: std::arch::is_aarch64_feature_detected!("neon"),
        dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
        ..CpuFeatures::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// The path the dispatching kernels use on this machine; `TANDEM_KERNELS_PATH` (a name from
/// [`available_paths`]) may force a slower one for comparison.
pub(crate) fn selected() -> Path {
    static SELECTED: OnceLock<Path> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let avail = Path::available();
        if let Ok(want) = std::env::var("TANDEM_KERNELS_PATH")
            && let Some(p) = avail.iter().find(|p| p.name() == want)
        {
            return *p;
        }
        avail[0]
    })
}

/// Name of the kernel path in use, e.g. `"avx512+vnni"`.
pub fn selected_path() -> &'static str {
    selected().name()
}

/// Names of every kernel path this machine can run, best first (the last is `"scalar"`).
pub fn available_paths() -> Vec<&'static str> {
    Path::available().into_iter().map(Path::name).collect()
}

/// Physical cores among the CPUs this machine has online, from the Linux topology files; None
/// where they cannot be read (other systems, restricted sandboxes).
pub fn physical_cores() -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/sys/devices/system/cpu").ok()?.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_prefix("cpu")) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let topology = entry.path().join("topology");
        let read = |file: &str| std::fs::read_to_string(topology.join(file)).ok();
        let core = read("core_id")?;
        let package = read("physical_package_id").unwrap_or_default();
        cores.insert((package.trim().to_owned(), core.trim().to_owned()));
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Whether `threads` kernel threads would have to share physical cores (SMT siblings). Unknown
/// topology counts as shared, the cautious answer for small steps.
pub fn threads_share_cores(threads: usize) -> bool {
    physical_cores().is_none_or(|cores| threads > cores)
}

/// CPU time the calling thread has used, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`); 0 where the
/// clock cannot be read. One system call: cheap next to a model step, too dear for a token loop.
pub fn thread_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// CPU time the whole process has used, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`); 0 where
/// the clock cannot be read.
pub fn process_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        read_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        0
    }
}

#[cfg(unix)]
fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Another thread's CPU clock, readable from any thread while that thread runs.
#[derive(Debug, Clone, Copy)]
pub struct ThreadClock {
    #[cfg(unix)]
    clock: libc::clockid_t,
}

impl ThreadClock {
    /// The clock of a spawned thread that has not been joined (None where unsupported).
    pub fn of<T>(handle: &std::thread::JoinHandle<T>) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::thread::JoinHandleExt;
            let mut clock: libc::clockid_t = 0;
            // SAFETY: the handle's thread is not joined yet, so its pthread_t is valid.
            let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
            (rc == 0).then_some(Self { clock })
        }
        #[cfg(not(unix))]
        {
            let _ = handle;
            None
        }
    }

    /// The CPU time the thread has used so far, in nanoseconds (0 once it has exited).
    pub fn ns(&self) -> u64 {
        #[cfg(unix)]
        {
            read_clock(self.clock)
        }
        #[cfg(not(unix))]
        {
            0
        }
    }
}

#[cfg(test)]
mod cpu_clock_tests {
    use super::thread_cpu_ns;

    #[test]
    fn the_thread_clock_advances_with_work_and_not_with_sleep() {
        let start = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let worked = thread_cpu_ns() - start;
        assert!(worked > 0, "work shows on the clock");
        let before_sleep = thread_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_ns() - before_sleep;
        assert!(slept < 20_000_000, "sleeping costs no CPU: {slept} ns");
    }

    #[test]
    fn another_threads_clock_reads_its_work() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            let _ = rx.recv();
        });
        let clock = super::ThreadClock::of(&handle).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while clock.ns() < 1_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(clock.ns() >= 1_000_000, "{} ns", clock.ns());
        tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
