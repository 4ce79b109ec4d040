//! One decoder for the supported GGUF architectures (llama, qwen2, qwen3, gemma3), configured per
//! architecture. Weights stay in the memory map; every matmul goes through `tandem-kernels`.
//!
//! The forward pass takes a batch of (sequence, new tokens) pairs, so prefill chunks of several
//! requests and single decode tokens share each weight pass.

use std::sync::Arc;

use tandem_kernels::pack::interleave8;
use tandem_kernels::{
    KernelPool, Layout, QMatrix, QuantType, dequantize_row, ops, prefers_interleaved8, quantize_row,
};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama and its GGUF relatives (SmolLM2).
    Llama,
    /// Qwen2: llama-like with q/k/v biases.
    Qwen2,
    /// Qwen3: llama-like with q/k RMSNorm.
    Qwen3,
    /// Gemma 3: q/k norms, pre and post norms, sliding-window layers, gelu-tanh MLP.
    Gemma3,
}

impl Arch {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" => Self::Gemma3,
            other => return Err(Error::Unsupported(format!("architecture {other:?}"))),
        })
    }

    /// The name used in GGUF metadata keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// Shape and numerics of a loaded model.
#[derive(Debug, Clone)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Vocabulary (output rows).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Training context length from metadata.
    pub context_length: usize,
    /// Rotate halves (NeoX) rather than adjacent pairs.
    pub rope_neox: bool,
    rope_theta: f32,
    rope_theta_local: f32,
    sliding_window: Option<usize>,
    sliding_pattern: usize,
    embed_scale: Option<f32>,
    gelu: bool,
    attn_scale: f32,
}

impl Config {
    /// Floats of K (and of V) per token per layer.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of KV cache one token takes across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layers * 2 * self.kv_dim() * std::mem::size_of::<f32>()
    }

    fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = Arch::parse(g.get_str("general.architecture")?)?;
        let a = arch.as_str();
        let u = |k: &str| g.get_u64(&format!("{a}.{k}")).map(|v| v as usize);
        let hidden = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = u("attention.head_count_kv").unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::Gguf(format!(
                "bad head counts: {n_heads} query heads, {n_kv_heads} kv heads"
            )));
        }
        let head_dim = u("attention.key_length").unwrap_or(hidden / n_heads);
        let vocab = match g.tensors.get("token_embd.weight") {
            Some(t) => t.rows(),
            None => return Err(Error::Gguf("tensor token_embd.weight not found".into())),
        };
        let rope_theta =
            g.get_f64(&format!("{a}.rope.freq_base"))
                .unwrap_or(if arch == Arch::Gemma3 { 1e6 } else { 10_000.0 }) as f32;
        let gemma = arch == Arch::Gemma3;
        Ok(Self {
            arch,
            n_layers: u("block_count")?,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: u("feed_forward_length")?,
            vocab,
            eps: g
                .get_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6) as f32,
            context_length: u("context_length").unwrap_or(4096),
            rope_neox: arch != Arch::Llama,
            rope_theta,
            rope_theta_local: g
                .get_f64(&format!("{a}.rope.local_freq_base"))
                .unwrap_or(10_000.0) as f32,
            sliding_window: if gemma {
                u("attention.sliding_window").ok()
            } else {
                None
            },
            sliding_pattern: u("attention.sliding_window_pattern").unwrap_or(6).max(1),
            embed_scale: gemma.then(|| (hidden as f32).sqrt()),
            gelu: gemma,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }
}

/// How the decoder's matrix weights (attention, MLP and output head) are held at run time.
/// The token embedding always stays as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// As stored in the file: read from the memory map, or held interleaved by 8 rows where the
    /// kernels read that faster (the same bytes; the mapped pages are then released).
    #[default]
    AsStored,
    /// Requantized to Q8_0 at load: 8-bit blocks of 32 with an f16 scale (about 1.06 bytes per
    /// weight held in memory). Matrices already in Q8_0 stay mapped.
    Q8_0,
    /// Dequantized to f16 at load (2 bytes per weight); float dots, no activation quantization.
    F16,
    /// Dequantized to f32 at load (4 bytes per weight); float dots, no activation quantization.
    F32,
}

impl WeightFormat {
    /// The names accepted by [`WeightFormat::parse`]: `as_stored`, `q8_0`, `f16`, `f32`.
    pub const NAMES: [&'static str; 4] = ["as_stored", "q8_0", "f16", "f32"];

    /// Parses a name from [`WeightFormat::NAMES`] (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "as_stored" => Ok(Self::AsStored),
            "q8_0" => Ok(Self::Q8_0),
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(Error::InvalidArgument(format!(
                "weight format {other:?}, expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// The name of this format, as accepted by [`WeightFormat::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AsStored => "as_stored",
            Self::Q8_0 => "q8_0",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    fn target(self) -> Option<QuantType> {
        match self {
            Self::AsStored => None,
            Self::Q8_0 => Some(QuantType::Q8_0),
            Self::F16 => Some(QuantType::F16),
            Self::F32 => Some(QuantType::F32),
        }
    }
}

/// A weight matrix: its bytes stay in the memory map unless converted at load.
struct Weight {
    ty: QuantType,
    rows: usize,
    cols: usize,
    offset: usize,
    /// Bytes of the tensor in the memory map.
    len: usize,
    /// Converted or interleaved bytes; `None` reads the memory map.
    owned: Option<Vec<u8>>,
    /// Whether `owned` holds another format than the file's (see [`WeightFormat`]).
    converted: bool,
    /// How the bytes are arranged.
    layout: Layout,
}

impl Weight {
    fn matrix<'a>(&'a self, map: &'a [u8]) -> QMatrix<'a> {
        let data = match &self.owned {
            Some(bytes) => &bytes[..],
            None => &map[self.offset..self.offset + self.len],
        };
        QMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data,
            layout: self.layout,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
    gate: Weight,
    up: Weight,
    down: Weight,
    rope_theta: f32,
    window: Option<usize>,
}

/// Attention work (scores × head width, over all heads) below which a step's attention runs on
/// the engine thread alone: waking the pool costs more than small decode steps save.
const PARALLEL_ATTENTION_WORK: usize = 1 << 18;

/// Most consecutive tokens of one sequence whose attention (for one query head) one task
/// computes: they read the same keys and values, and a prefill step has fewer, larger tasks.
const ATTENTION_BLOCK_ROWS: usize = 4;

thread_local! {
    /// Attention scores of one query on this thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The attention output shared by the pool's tasks, each writing its own disjoint part.
#[derive(Clone, Copy)]
struct RowsOut(*mut f32);

// SAFETY: tasks write disjoint ranges behind the pointer (see its use in `forward`).
unsafe impl Sync for RowsOut {}

impl RowsOut {
    /// The pointer `at` floats in.
    fn at(self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }
}

/// Loaded model weights.
pub struct Model {
    gguf: Arc<GgufFile>,
    /// Shape and numerics.
    pub cfg: Config,
    embed: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    format: WeightFormat,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn f32_vec(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let info = g.tensor_info(name)?;
    let ty = QuantType::from_ggml_type_id(info.ggml_type).ok_or_else(|| {
        Error::Unsupported(format!("tensor {name}: ggml type {}", info.ggml_type))
    })?;
    let n = info.dims.iter().product::<u64>() as usize;
    if n != len {
        return Err(Error::Gguf(format!(
            "tensor {name}: {n} elements, expected {len}"
        )));
    }
    let mut out = vec![0f32; n];
    dequantize_row(ty, g.tensor_bytes(info), &mut out).map_err(|e| Error::Kernel(e.to_string()))?;
    Ok(out)
}

fn weight(info: &TensorInfo, name: &str, rows: usize, cols: usize) -> Result<Weight> {
    if info.cols() != cols || info.rows() != rows {
        return Err(Error::Gguf(format!(
            "tensor {name}: shape {:?}, expected {cols}x{rows}",
            info.dims
        )));
    }
    let ty = QuantType::from_ggml_type_id(info.ggml_type).ok_or_else(|| {
        Error::Unsupported(format!("tensor {name}: ggml type {}", info.ggml_type))
    })?;
    Ok(Weight {
        ty,
        rows,
        cols,
        offset: info.offset,
        len: info.len,
        owned: None,
        converted: false,
        layout: Layout::Rows,
    })
}

/// Converts a matrix to `to` row by row (dequantize, then quantize) into owned bytes.
fn convert(w: &mut Weight, map: &[u8], to: QuantType, name: &str) -> Result<()> {
    if w.ty == to {
        return Ok(());
    }
    let row_bytes = to
        .row_bytes(w.cols)
        .map_err(|e| Error::Unsupported(format!("tensor {name} as {to:?}: {e}")))?;
    let mut out = Vec::with_capacity(row_bytes * w.rows);
    let mut row = vec![0.0f32; w.cols];
    let m = w.matrix(map);
    for r in 0..w.rows {
        dequantize_row(m.ty, m.row(r), &mut row)
            .and_then(|()| quantize_row(to, &row, &mut out))
            .map_err(|e| Error::Kernel(format!("tensor {name}: {e}")))?;
    }
    w.ty = to;
    w.owned = Some(out);
    w.converted = true;
    Ok(())
}

/// Interleaves a matrix by 8 rows when the kernels' path reads that layout faster.
fn interleave(w: &mut Weight, g: &GgufFile, name: &str) -> Result<()> {
    if w.layout != Layout::Rows || !prefers_interleaved8(w.ty, w.rows) {
        return Ok(());
    }
    let bytes = interleave8(&w.matrix(g.map()))
        .map_err(|e| Error::Kernel(format!("tensor {name}: {e}")))?;
    w.owned = Some(bytes);
    w.layout = Layout::Interleaved8;
    Ok(())
}

impl Model {
    /// Loads a model's weights from a parsed GGUF file, as stored.
    pub fn load(gguf: Arc<GgufFile>) -> Result<Self> {
        Self::load_with(gguf, WeightFormat::AsStored)
    }

    /// Loads a model's weights, converting the matrices to `format` (see [`WeightFormat`]), and
    /// interleaving those the kernels read faster that way.
    pub fn load_with(gguf: Arc<GgufFile>, format: WeightFormat) -> Result<Self> {
        let mut model = Self::load_mapped(gguf)?;
        let gguf = model.gguf.clone();
        let mut matrices = vec![(&mut model.output, "output".to_owned())];
        for (i, l) in model.layers.iter_mut().enumerate() {
            for (w, name) in [
                (&mut l.wq, "attn_q"),
                (&mut l.wk, "attn_k"),
                (&mut l.wv, "attn_v"),
                (&mut l.wo, "attn_output"),
                (&mut l.gate, "ffn_gate"),
                (&mut l.up, "ffn_up"),
                (&mut l.down, "ffn_down"),
            ] {
                matrices.push((w, format!("blk.{i}.{name}")));
            }
        }
        for (w, name) in matrices {
            if let Some(to) = format.target() {
                convert(w, gguf.map(), to, &name)?;
            }
            interleave(w, &gguf, &name)?;
            // A held copy replaces the mapped pages, so memory stays about the file's size.
            if w.owned.is_some() {
                gguf.release(w.offset, w.len);
            }
        }
        model.format = format;
        Ok(model)
    }

    /// How the matrices are held (see [`WeightFormat`]).
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of weights converted to another format than the file's (see [`WeightFormat`]).
    /// Interleaved copies of stored weights are not counted: their mapped pages are released.
    pub fn converted_bytes(&self) -> usize {
        let held = |w: &Weight| match &w.owned {
            Some(bytes) if w.converted => bytes.len(),
            _ => 0,
        };
        let layer = |l: &Layer| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|w| held(w))
                .sum::<usize>()
        };
        held(&self.output) + self.layers.iter().map(layer).sum::<usize>()
    }

    fn load_mapped(gguf: Arc<GgufFile>) -> Result<Self> {
        let g = &*gguf;
        let cfg = Config::from_gguf(g)?;
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let qd = cfg.n_heads * hd;
        let kvd = cfg.kv_dim();
        let w = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
            weight(g.tensor_info(name)?, name, rows, cols)
        };
        let opt = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if g.tensors.contains_key(name) {
                f32_vec(g, name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let embed = w("token_embd.weight", cfg.vocab, h)?;
        let output = if g.tensors.contains_key("output.weight") {
            w("output.weight", cfg.vocab, h)?
        } else {
            w("token_embd.weight", cfg.vocab, h)?
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let sliding = cfg
                .sliding_window
                .filter(|_| (i + 1) % cfg.sliding_pattern != 0);
            let (q_norm, k_norm) = match cfg.arch {
                Arch::Gemma3 | Arch::Qwen3 => (
                    Some(f32_vec(g, &p("attn_q_norm.weight"), hd)?),
                    Some(f32_vec(g, &p("attn_k_norm.weight"), hd)?),
                ),
                _ => (None, None),
            };
            let gemma = cfg.arch == Arch::Gemma3;
            layers.push(Layer {
                attn_norm: f32_vec(g, &p("attn_norm.weight"), h)?,
                wq: w(&p("attn_q.weight"), qd, h)?,
                wk: w(&p("attn_k.weight"), kvd, h)?,
                wv: w(&p("attn_v.weight"), kvd, h)?,
                wo: w(&p("attn_output.weight"), h, qd)?,
                bq: opt(&p("attn_q.bias"), qd)?,
                bk: opt(&p("attn_k.bias"), kvd)?,
                bv: opt(&p("attn_v.bias"), kvd)?,
                q_norm,
                k_norm,
                post_attn_norm: if gemma {
                    Some(f32_vec(g, &p("post_attention_norm.weight"), h)?)
                } else {
                    None
                },
                ffn_norm: f32_vec(g, &p("ffn_norm.weight"), h)?,
                post_ffn_norm: if gemma {
                    Some(f32_vec(g, &p("post_ffw_norm.weight"), h)?)
                } else {
                    None
                },
                gate: w(&p("ffn_gate.weight"), cfg.ffn, h)?,
                up: w(&p("ffn_up.weight"), cfg.ffn, h)?,
                down: w(&p("ffn_down.weight"), h, cfg.ffn)?,
                rope_theta: if sliding.is_some() {
                    cfg.rope_theta_local
                } else {
                    cfg.rope_theta
                },
                window: sliding,
            });
        }
        let output_norm = f32_vec(g, "output_norm.weight", h)?;
        Ok(Self {
            gguf,
            cfg,
            embed,
            output,
            output_norm,
            layers,
            format: WeightFormat::AsStored,
        })
    }

    /// The parsed file the weights are mapped from.
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// Moves a run `delta` positions: its keys get the extra rotary rotation (rotations
    /// compose, so a key embedded at `p` becomes the key embedded at `p + delta`); values carry
    /// no position. What the run attended to when it was computed stays as it was.
    pub fn shift_run(&self, run: &mut KvRun, delta: i64) {
        if delta == 0 {
            return;
        }
        let (hd, heads, kvd) = (self.cfg.head_dim, self.cfg.n_kv_heads, self.cfg.kv_dim());
        for (layer, l) in self.layers.iter().zip(&mut run.layers) {
            let cs = ops::rope_angles(hd, delta as f64, layer.rope_theta);
            for key in l.k.chunks_exact_mut(kvd) {
                ops::rope_apply(key, heads, hd, &cs, self.cfg.rope_neox);
            }
        }
    }

    /// Runs the decoder over a batch of sequences' new tokens, appending their keys and values
    /// to each sequence's cache. Writes logits (vocab floats per row) into `logits` for each
    /// requested row (`tokens[logits_from..]` of each item), in batch order.
    pub fn forward(
        &self,
        pool: &KernelPool,
        items: &mut [BatchItem<'_>],
        s: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let n: usize = items.iter().map(|it| it.tokens.len()).sum();
        if n == 0 {
            logits.clear();
            return Ok(());
        }
        let map: &[u8] = self.gguf.map();
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let qd = cfg.n_heads * hd;
        let kvd = cfg.kv_dim();
        let max_ctx = items
            .iter()
            .map(|it| it.kv.len + it.tokens.len())
            .max()
            .unwrap_or(0);
        s.ensure(cfg, n, max_ctx);
        let kerr = |e: tandem_kernels::Error| Error::Kernel(e.to_string());

        // Embeddings.
        let emb = self.embed.matrix(map);
        let mut r = 0;
        for it in items.iter() {
            for &t in it.tokens {
                if t as usize >= cfg.vocab {
                    return Err(Error::InvalidArgument(format!(
                        "token id {t} outside vocabulary of {}",
                        cfg.vocab
                    )));
                }
                let row = &mut s.x[r * h..(r + 1) * h];
                dequantize_row(emb.ty, emb.row(t as usize), row).map_err(kerr)?;
                if let Some(sc) = cfg.embed_scale {
                    row.iter_mut().for_each(|v| *v *= sc);
                }
                r += 1;
            }
        }
        for it in items.iter_mut() {
            it.kv.reserve(cfg, it.tokens.len());
        }

        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            for r in 0..n {
                ops::rms_norm(
                    &s.x[r * h..(r + 1) * h],
                    &layer.attn_norm,
                    cfg.eps,
                    &mut s.xn[r * h..(r + 1) * h],
                );
            }
            let xn = &s.xn[..n * h];
            pool.matmul_many(
                &[
                    &layer.wq.matrix(map),
                    &layer.wk.matrix(map),
                    &layer.wv.matrix(map),
                ],
                xn,
                n,
                &mut [&mut s.q[..n * qd], &mut s.k[..n * kvd], &mut s.v[..n * kvd]],
            )
            .map_err(kerr)?;
            let mut r = 0;
            for it in items.iter_mut() {
                let base = it.kv.len;
                for (j, _) in it.tokens.iter().enumerate() {
                    let pos = base + j;
                    let q = &mut s.q[r * qd..(r + 1) * qd];
                    let k = &mut s.k[r * kvd..(r + 1) * kvd];
                    let v = &mut s.v[r * kvd..(r + 1) * kvd];
                    if let Some(b) = &layer.bq {
                        add_inplace(q, b);
                    }
                    if let Some(b) = &layer.bk {
                        add_inplace(k, b);
                    }
                    if let Some(b) = &layer.bv {
                        add_inplace(v, b);
                    }
                    if let Some(w) = &layer.q_norm {
                        for head in q.chunks_exact_mut(hd) {
                            ops::rms_norm_inplace(head, w, cfg.eps);
                        }
                    }
                    if let Some(w) = &layer.k_norm {
                        for head in k.chunks_exact_mut(hd) {
                            ops::rms_norm_inplace(head, w, cfg.eps);
                        }
                    }
                    ops::rope_inplace(q, cfg.n_heads, hd, pos, layer.rope_theta, cfg.rope_neox);
                    ops::rope_inplace(k, cfg.n_kv_heads, hd, pos, layer.rope_theta, cfg.rope_neox);
                    let lkv = &mut it.kv.layers[li];
                    lkv.k[pos * kvd..(pos + 1) * kvd].copy_from_slice(k);
                    lkv.v[pos * kvd..(pos + 1) * kvd].copy_from_slice(v);
                    r += 1;
                }
            }
            // Attention of each new token over its own sequence's cache (causal, windowed). One
            // task per block of a sequence's consecutive tokens and query head; each query's
            // scores and output are one kernel call over its rows, which long contexts were bound
            // by when it was one call per row. Each (token, head) sums in its own order, whatever
            // the block: the output does not depend on how tokens are batched.
            let group = cfg.n_heads / cfg.n_kv_heads;
            s.spans.clear();
            s.blocks.clear();
            for (ii, it) in items.iter().enumerate() {
                for j in 0..it.tokens.len() {
                    let pos = it.kv.len + j;
                    let start = layer.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let r = s.spans.len();
                    if j % ATTENTION_BLOCK_ROWS == 0 {
                        s.blocks.push((r, r + 1));
                    } else if let Some(last) = s.blocks.last_mut() {
                        last.1 = r + 1;
                    }
                    s.spans.push((ii, pos, start));
                }
            }
            let out = RowsOut(s.attn.as_mut_ptr());
            let (q_all, batch, rows, blocks) = (&s.q, &*items, &s.spans, &s.blocks);
            let task = |t: usize| {
                let (b, head) = (t / cfg.n_heads, t % cfg.n_heads);
                let kvh = head / group;
                let (r0, r1) = blocks[b];
                let lkv = &batch[rows[r0].0].kv.layers[li];
                SCORES.with(|cell| {
                    let mut scores = cell.borrow_mut();
                    for (r, &(_, pos, start)) in rows.iter().enumerate().take(r1).skip(r0) {
                        // This head's keys and values from `start` on, a row every kvd floats.
                        let from = start * kvd + kvh * hd;
                        scores.resize(pos + 1 - start, 0.0);
                        let q = &q_all[r * qd + head * hd..r * qd + (head + 1) * hd];
                        ops::dot_rows_f32(q, &lkv.k[from..], kvd, cfg.attn_scale, &mut scores);
                        ops::softmax_inplace(&mut scores);
                        // SAFETY: each task writes only its own head of its own rows of
                        // `s.attn`, which holds n rows of qd floats and is not read until every
                        // task is done.
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(out.at(r * qd + head * hd), hd)
                        };
                        o.fill(0.0);
                        ops::axpy_rows_f32(&scores, &lkv.v[from..], kvd, o);
                    }
                });
            };
            // As many tasks per block as query heads, so a single sequence's decode step still
            // spreads over many cores.
            let tasks = blocks.len() * cfg.n_heads;
            let work: usize = rows.iter().map(|&(_, pos, start)| pos + 1 - start).sum();
            if pool.threads() > 1 && work * cfg.n_heads * hd >= PARALLEL_ATTENTION_WORK {
                pool.for_each(tasks, &task).map_err(kerr)?;
            } else {
                (0..tasks).for_each(task);
            }
            pool.matmul(
                &layer.wo.matrix(map),
                &s.attn[..n * qd],
                n,
                &mut s.xn[..n * h],
            )
            .map_err(kerr)?;
            for r in 0..n {
                let o = &mut s.xn[r * h..(r + 1) * h];
                if let Some(w) = &layer.post_attn_norm {
                    ops::rms_norm_inplace(o, w, cfg.eps);
                }
                add_inplace(&mut s.x[r * h..(r + 1) * h], o);
            }

            // MLP block.
            for r in 0..n {
                ops::rms_norm(
                    &s.x[r * h..(r + 1) * h],
                    &layer.ffn_norm,
                    cfg.eps,
                    &mut s.xn[r * h..(r + 1) * h],
                );
            }
            let f = cfg.ffn;
            pool.matmul_many(
                &[&layer.gate.matrix(map), &layer.up.matrix(map)],
                &s.xn[..n * h],
                n,
                &mut [&mut s.gate[..n * f], &mut s.up[..n * f]],
            )
            .map_err(kerr)?;
            activate(pool, cfg.gelu, &mut s.gate[..n * f], &s.up[..n * f], n).map_err(kerr)?;
            pool.matmul(
                &layer.down.matrix(map),
                &s.gate[..n * f],
                n,
                &mut s.xn[..n * h],
            )
            .map_err(kerr)?;
            for r in 0..n {
                let o = &mut s.xn[r * h..(r + 1) * h];
                if let Some(w) = &layer.post_ffn_norm {
                    ops::rms_norm_inplace(o, w, cfg.eps);
                }
                add_inplace(&mut s.x[r * h..(r + 1) * h], o);
            }
        }
        for it in items.iter_mut() {
            it.kv.len += it.tokens.len();
        }

        // Output head over the rows that want logits.
        let mut m = 0;
        let mut r = 0;
        for it in items.iter() {
            let t = it.tokens.len();
            let rows = r + it.logits_from.min(t)..r + t;
            for row in rows {
                ops::rms_norm(
                    &s.x[row * h..(row + 1) * h],
                    &self.output_norm,
                    cfg.eps,
                    &mut s.xn[m * h..(m + 1) * h],
                );
                m += 1;
            }
            r += t;
        }
        logits.resize(m * cfg.vocab, 0.0);
        if m > 0 {
            pool.matmul(&self.output.matrix(map), &s.xn[..m * h], m, logits)
                .map_err(kerr)?;
        }
        Ok(())
    }
}

/// The MLP's activation of `n` rows, `gate = act(gate) * up`, with the rows split over the pool
/// when there are several: an `exp` or `tanh` per element is a prefill's largest serial step.
/// Each element is computed as on one thread.
fn activate(
    pool: &KernelPool,
    gelu: bool,
    gate: &mut [f32],
    up: &[f32],
    n: usize,
) -> std::result::Result<(), tandem_kernels::Error> {
    let run = |g: &mut [f32], u: &[f32]| {
        if gelu {
            ops::gelu_tanh_mul_inplace(g, u);
        } else {
            silu_mul(g, u);
        }
    };
    let width = gate.len() / n.max(1);
    if pool.threads() == 1 || n < PARALLEL_ACTIVATION_ROWS {
        run(gate, up);
        return Ok(());
    }
    let tasks = n.div_ceil(PARALLEL_ACTIVATION_ROWS);
    let out = RowsOut(gate.as_mut_ptr());
    pool.for_each(tasks, &|t| {
        let r0 = t * PARALLEL_ACTIVATION_ROWS;
        let r1 = (r0 + PARALLEL_ACTIVATION_ROWS).min(n);
        // SAFETY: task `t` alone writes rows r0..r1 of `gate`, which holds n rows of `width`.
        let g = unsafe { std::slice::from_raw_parts_mut(out.at(r0 * width), (r1 - r0) * width) };
        run(g, &up[r0 * width..r1 * width]);
    })
}

/// Rows per task of the parallel MLP activation.
const PARALLEL_ACTIVATION_ROWS: usize = 8;

/// `gate = silu(gate) * up`, written without `mul_add` so a portable build does not fall back
/// to a software fma per element.
fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

fn add_inplace(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// One layer's keys and values for one sequence: `[position][kv_dim]`.
#[derive(Debug, Default, Clone)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// A sequence's KV cache across layers.
#[derive(Debug, Default, Clone)]
pub struct SeqKv {
    layers: Vec<LayerKv>,
    /// Tokens held.
    pub len: usize,
}

/// Growth step of a sequence's KV storage, in tokens.
const KV_CHUNK: usize = 256;

impl SeqKv {
    /// An empty cache for a model.
    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: vec![LayerKv::default(); cfg.n_layers],
            len: 0,
        }
    }

    /// Makes room for `extra` more tokens.
    fn reserve(&mut self, cfg: &Config, extra: usize) {
        let need = (self.len + extra) * cfg.kv_dim();
        for l in &mut self.layers {
            if l.k.len() < need {
                let tokens = (self.len + extra).div_ceil(KV_CHUNK) * KV_CHUNK;
                let size = tokens * cfg.kv_dim();
                l.k.reserve_exact(size - l.k.len());
                l.k.resize(size, 0.0);
                l.v.reserve_exact(size - l.v.len());
                l.v.resize(size, 0.0);
            }
        }
    }

    /// Forgets everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Copies the keys and values of positions `from..from + n` (clamped to what is held).
    pub fn copy_run(&self, cfg: &Config, from: usize, n: usize) -> KvRun {
        let kvd = cfg.kv_dim();
        let n = n.min(self.len.saturating_sub(from));
        let range = from * kvd..(from + n) * kvd;
        KvRun {
            layers: self
                .layers
                .iter()
                .map(|l| LayerKv {
                    k: l.k[range.clone()].to_vec(),
                    v: l.v[range.clone()].to_vec(),
                })
                .collect(),
            len: n,
        }
    }

    /// Appends a run of keys and values after the held tokens.
    pub fn append_run(&mut self, cfg: &Config, run: &KvRun) {
        self.reserve(cfg, run.len);
        let at = self.len * cfg.kv_dim();
        for (l, r) in self.layers.iter_mut().zip(&run.layers) {
            l.k[at..at + r.k.len()].copy_from_slice(&r.k);
            l.v[at..at + r.v.len()].copy_from_slice(&r.v);
        }
        self.len += run.len;
    }

    /// Tokens the storage can hold without growing.
    pub fn capacity_tokens(&self, cfg: &Config) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.k.len() / cfg.kv_dim().max(1))
    }

    /// Releases storage beyond what the held tokens need (rounded up to the growth step).
    pub fn shrink(&mut self, cfg: &Config) {
        let size = self.len.div_ceil(KV_CHUNK) * KV_CHUNK * cfg.kv_dim();
        for l in &mut self.layers {
            if l.k.len() > size {
                l.k.truncate(size);
                l.k.shrink_to_fit();
                l.v.truncate(size);
                l.v.shrink_to_fit();
            }
        }
    }
}

/// Keys and values of consecutive positions taken out of a sequence's cache, to be put back
/// at another position ([`Model::shift_run`], [`SeqKv::append_run`]).
#[derive(Debug, Default, Clone)]
pub struct KvRun {
    layers: Vec<LayerKv>,
    /// Positions held.
    pub len: usize,
}

/// One entry of a forward batch.
pub struct BatchItem<'a> {
    /// The sequence's cache; the new tokens go at positions `kv.len..`.
    pub kv: &'a mut SeqKv,
    /// New tokens.
    pub tokens: &'a [u32],
    /// Logits are produced for `tokens[logits_from..]` (`tokens.len()` = none, `0` = all).
    pub logits_from: usize,
}

/// Preallocated activations for a forward pass.
#[derive(Debug, Default)]
pub struct Scratch {
    rows: usize,
    ctx: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The step's tokens for attention: (batch item, position, first position attended).
    spans: Vec<(usize, usize, usize)>,
    /// Row ranges of `spans` whose attention one task computes.
    blocks: Vec<(usize, usize)>,
}

impl Scratch {
    /// Scratch for up to `rows` tokens per step and `ctx` positions of context.
    pub fn new(cfg: &Config, rows: usize, ctx: usize) -> Self {
        let mut s = Self::default();
        s.grow(cfg, rows, ctx);
        s
    }

    fn ensure(&mut self, cfg: &Config, rows: usize, ctx: usize) {
        // Sized up front by the engine; grows only if a caller exceeds that.
        if rows > self.rows || ctx > self.ctx {
            self.grow(cfg, rows.max(self.rows), ctx.max(self.ctx));
        }
    }

    fn grow(&mut self, cfg: &Config, rows: usize, ctx: usize) {
        let qd = cfg.n_heads * cfg.head_dim;
        let kvd = cfg.kv_dim();
        self.rows = rows;
        self.ctx = ctx;
        self.x.resize(rows * cfg.hidden, 0.0);
        self.xn.resize(rows * cfg.hidden, 0.0);
        self.q.resize(rows * qd, 0.0);
        self.k.resize(rows * kvd, 0.0);
        self.v.resize(rows * kvd, 0.0);
        self.attn.resize(rows * qd, 0.0);
        self.gate.resize(rows * cfg.ffn, 0.0);
        self.up.resize(rows * cfg.ffn, 0.0);
        self.spans.reserve(rows);
    }
}
