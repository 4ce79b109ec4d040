//! CPU feature detection, done once and cached, and the kernel path chosen from it.

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
