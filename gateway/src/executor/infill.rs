//! Code completion on the code model (llama.cpp's `/infill`, and `/v1/completions` with a
//! `suffix` when `[ide]` is set): the FIM prompt from the model's own template, the prefix cache
//! across keystrokes (what was computed is counted), the editor's stop rules (`n_indent`, stop
//! words, the time budgets), and supersede: a newer request from the same editor session stops
//! the older one at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tandem_local_model::{
    Engine, ExtraFile, FimInput, FimPrompt, FimTemplate, GenerateEvent, GenerateRequest,
    SamplingParams, StopReason,
};
use tandem_router_policy::{CascadeAction, CascadePolicy, LocalConfidence};
use tokio::sync::{mpsc, oneshot};

use crate::config::IdeConfig;
use crate::error::Error;

/// A decoded completion request for the code model.
#[derive(Debug, Clone, Default)]
pub struct InfillRequest {
    /// Text before the cursor.
    pub input_prefix: String,
    /// Text after the cursor.
    pub input_suffix: String,
    /// Text typed at the cursor, appended to the prefix.
    pub prompt: String,
    /// Repository context.
    pub input_extra: Vec<ExtraFile>,
    /// Most tokens to generate; none = until a stop (or the context is full).
    pub n_predict: Option<u32>,
    /// Budget for the prompt phase: past it, the answer is empty with `stop_type` `limit`.
    pub t_max_prompt_ms: Option<u64>,
    /// Budget for generation, from the first token: past it, what is ready is returned.
    pub t_max_predict_ms: Option<u64>,
    /// Multi-line: stop at a new line indented less than this many columns (0 = off).
    pub n_indent: u32,
    /// Sampling.
    pub params: SamplingParams,
    /// Whether the answer streams.
    pub stream: bool,
    /// The editor session whose newer request supersedes this one (`id_slot` or the
    /// `x-tandem-editor-session` header).
    pub session: Option<String>,
}

/// Why a completion ended, as llama.cpp's `stop_type` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopType {
    /// Not stopped by a rule (superseded, or the client went away).
    None,
    /// An end-of-sequence or FIM end token.
    Eos,
    /// A stop word.
    Word,
    /// `n_predict`, `n_indent` or a time budget.
    Limit,
}

impl StopType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Eos => "eos",
            Self::Word => "word",
            Self::Limit => "limit",
        }
    }
}

/// A finished (or stopped) completion with its counts and timings.
#[derive(Debug, Clone, Default)]
pub struct InfillOutcome {
    /// The completion text.
    pub content: String,
    /// Tokens generated.
    pub tokens_predicted: usize,
    /// Prompt tokens in all.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed).
    pub cached_tokens: usize,
    /// Whether the prompt was shortened to fit the context budget.
    pub truncated: bool,
    /// Why it ended.
    pub stop_type: Option<StopType>,
    /// The stop word that ended it, if one did.
    pub stopping_word: String,
    /// Prompt phase, ms (request start to the first token).
    pub prompt_ms: f64,
    /// Generation phase, ms (first token to the end).
    pub predicted_ms: f64,
    /// A newer request of the same editor session stopped this one.
    pub superseded: bool,
    /// The confidence of the first tokens, when it was under the caller's threshold: the
    /// completion stopped there, for the cloud to answer instead.
    pub unsure: Option<f32>,
}

impl InfillOutcome {
    /// Prompt tokens actually computed (not from the cache).
    pub fn computed_tokens(&self) -> usize {
        self.prompt_tokens.saturating_sub(self.cached_tokens)
    }
}

/// One streamed piece of a completion.
#[derive(Debug)]
pub enum InfillChunk {
    /// New text.
    Text(String),
    /// The end, with everything counted.
    Done(InfillOutcome),
    /// It failed after it started.
    Failed(Error),
}

/// The running completions of each editor session, so that a newer one stops the older.
#[derive(Debug, Default)]
pub struct EditorSessions {
    running: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next: Mutex<u64>,
}

/// A completion's place in its session: its stop signal, and its entry, removed on drop.
pub struct SessionTicket {
    sessions: Arc<EditorSessions>,
    key: Option<(String, u64)>,
    /// Without a session nothing supersedes: the sender is kept so the signal never fires.
    _unnamed: Option<oneshot::Sender<()>>,
    /// Fires when a newer request of the session arrives.
    pub superseded: oneshot::Receiver<()>,
}

impl EditorSessions {
    /// Registers a completion of `session`, stopping the one it replaces.
    pub fn enter(self: &Arc<Self>, session: Option<&str>) -> SessionTicket {
        let (tx, rx) = oneshot::channel();
        let Some(s) = session else {
            return SessionTicket {
                sessions: self.clone(),
                key: None,
                _unnamed: Some(tx),
                superseded: rx,
            };
        };
        let id = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        if let Some((_, older)) = self.running.lock().insert(s.to_owned(), (id, tx)) {
            let _ = older.send(());
        }
        let key = Some((s.to_owned(), id));
        SessionTicket {
            sessions: self.clone(),
            key,
            _unnamed: None,
            superseded: rx,
        }
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        if let Some((session, id)) = &self.key {
            let mut running = self.sessions.running.lock();
            if running.get(session).is_some_and(|(i, _)| i == id) {
                running.remove(session);
            }
        }
    }
}

/// The FIM template of the engine's model, or the 400 that says it has none.
pub fn template(engine: &Engine, param: &str) -> Result<FimTemplate, Error> {
    engine
        .tokenizer()
        .fim_template()
        .ok_or_else(|| Error::Unsupported {
            message: format!(
                "this local model ({}) has no fill-in-the-middle tokens; serve a code model with [ide] or `tandem serve --ide`",
                engine.info().name
            ),
            param: param.into(),
        })
}

/// The prompt budget: the `[ide]` section's, or llama.cpp's default batch split.
pub fn budget(ide: Option<&IdeConfig>) -> (usize, usize, usize) {
    let d = IdeConfig::default();
    let ide = ide.unwrap_or(&d);
    (ide.prefix_tokens(), ide.suffix_tokens(), ide.extra_tokens)
}

/// The FIM prompt of a request: its tokens, whether it was cut to fit, and the text the answer
/// must begin with.
pub fn prompt(
    engine: &Engine,
    template: &FimTemplate,
    request: &InfillRequest,
    ide: Option<&IdeConfig>,
) -> FimPrompt {
    let tok = engine.tokenizer();
    let (max_prefix_tokens, max_suffix_tokens, max_extra_tokens) = budget(ide);
    let mut template = template.clone();
    template.suffix_first |= ide.is_some_and(|i| i.suffix_first);
    template.build(
        &FimInput {
            prefix: &request.input_prefix,
            suffix: &request.input_suffix,
            prompt: &request.prompt,
            extra: &request.input_extra,
            max_prefix_tokens,
            max_suffix_tokens,
            max_extra_tokens,
            typed_in_middle: ide
                .map_or(IdeConfig::default().typed_in_middle, |i| i.typed_in_middle),
        },
        tok.adds_bos().then(|| tok.bos_id()).flatten(),
        |text| tok.encode_with(text, false, false),
    )
}

/// A request's FIM template and prompt, built once for the routing decision and the run.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The engine model's template.
    pub template: FimTemplate,
    /// The request's prompt.
    pub prompt: FimPrompt,
}

impl Prepared {
    /// Builds the prompt of `request` for `engine`'s model, or the 400 for a model without
    /// fill-in-the-middle tokens.
    pub fn new(
        engine: &Engine,
        request: &InfillRequest,
        ide: Option<&IdeConfig>,
    ) -> Result<Self, Error> {
        let template = template(engine, "input_prefix")?;
        let prompt = prompt(engine, &template, request, ide);
        Ok(Self { template, prompt })
    }
}

/// Tokens whose confidence judges a completion the cloud may take (as the chat cascade's).
pub const CONFIDENCE_TOKENS: usize = 4;

/// Runs a completion; with `chunks`, text is sent as it is ready and the end as `Done`.
/// `n_predict: 0` only warms the prefix cache: it answers at once while the prompt is computed
/// in the background. With `unsure_below` over 0 (whole answers only), a completion whose first
/// [`CONFIDENCE_TOKENS`] tokens' confidence is under it stops there, marked `unsure`.
pub async fn run(
    engine: &Engine,
    request: &InfillRequest,
    prepared: &Prepared,
    sessions: &Arc<EditorSessions>,
    chunks: Option<mpsc::Sender<InfillChunk>>,
    unsure_below: f32,
) -> Result<InfillOutcome, Error> {
    let started = Instant::now();
    let Prepared { template, prompt } = prepared;
    let FimPrompt {
        tokens,
        truncated,
        forced,
    } = prompt.clone();
    let context = engine.info().context_length;
    if tokens.len() + 1 >= context {
        return Err(Error::invalid(
            format!(
                "the prompt ({} tokens) leaves no room in the context of {context}",
                tokens.len()
            ),
            Some("input_prefix"),
        ));
    }
    let room = context - tokens.len();
    let mut params = request.params.clone();
    params.stop_token_ids.extend(&template.stop_tokens);
    params.forced_prefix = forced;
    let prompt_tokens = tokens.len();

    if request.n_predict == Some(0) {
        params.max_tokens = 1;
        let (mut rx, cached) = engine
            .generate_counted(GenerateRequest {
                prompt: tokens,
                params,
            })
            .map_err(|e| Error::LocalModel(e.to_string()))?;
        // The prompt is computed after the answer; the cache keeps it for the next request.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let cached = tokio::time::timeout(Duration::from_millis(50), cached)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        return Ok(InfillOutcome {
            prompt_tokens,
            cached_tokens: cached,
            truncated,
            stop_type: Some(StopType::Limit),
            prompt_ms: ms(started.elapsed()),
            ..InfillOutcome::default()
        });
    }

    params.max_tokens = request
        .n_predict
        .map_or(room, |n| (n as usize).min(room))
        .max(1);
    let mut judge = (unsure_below > 0.0 && chunks.is_none()).then(|| {
        params.logprobs = Some(params.logprobs.unwrap_or(0));
        (Vec::new(), Vec::new())
    });
    let mut ticket = sessions.enter(request.session.as_deref());
    let (mut rx, mut cached_rx) = engine
        .generate_counted(GenerateRequest {
            prompt: tokens,
            params,
        })
        .map_err(|e| Error::LocalModel(e.to_string()))?;

    let mut out = InfillOutcome {
        prompt_tokens,
        truncated,
        ..InfillOutcome::default()
    };
    let mut cached: Option<usize> = None;
    let mut indent = IndentRule::new(request.n_indent);
    let mut brackets = BracketRule::default();
    let prompt_deadline = request
        .t_max_prompt_ms
        .map(|ms| tokio::time::Instant::from_std(started) + Duration::from_millis(ms));
    let mut deadline = prompt_deadline;
    let mut first_token: Option<Instant> = None;
    let mut last_id: Option<u32> = None;
    let end_ids: Vec<u32> = engine
        .info()
        .eos_token_ids
        .iter()
        .chain(&template.stop_tokens)
        .copied()
        .collect();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            biased;
            _ = &mut ticket.superseded => {
                out.superseded = true;
                out.stop_type = Some(StopType::None);
                break;
            }
            n = &mut cached_rx, if cached.is_none() => {
                cached = Some(n.unwrap_or(0));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                out.stop_type = Some(StopType::Limit);
                break;
            }
            event = rx.recv() => match event {
                Some(GenerateEvent::Token { id, text, logprob }) => {
                    last_id = Some(id);
                    if let (Some((logprobs, entropies)), Some(lp)) = (&mut judge, &logprob) {
                        logprobs.push(lp.logprob);
                        entropies.push(lp.entropy);
                    }
                    if first_token.is_none() {
                        first_token = Some(Instant::now());
                        out.prompt_ms = ms(started.elapsed());
                        deadline = request
                            .t_max_predict_ms
                            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
                    }
                    out.tokens_predicted += 1;
                    let before = out.content.len();
                    out.content.push_str(&text);
                    let cut = [indent.check(&out.content), brackets.check(&out.content)]
                        .into_iter()
                        .flatten()
                        .min();
                    if let Some(cut) = cut {
                        out.content.truncate(cut);
                        out.stop_type = Some(StopType::Limit);
                    }
                    if let Some(tx) = &chunks {
                        let new = out.content.get(before..).unwrap_or("").to_owned();
                        if !new.is_empty() && tx.send(InfillChunk::Text(new)).await.is_err() {
                            out.stop_type = Some(StopType::None);
                            break;
                        }
                    }
                    if judge.as_ref().is_some_and(|(l, _)| l.len() >= CONFIDENCE_TOKENS) {
                        out.unsure = judged(judge.take(), unsure_below);
                    }
                    if out.stop_type.is_some() || out.unsure.is_some() {
                        break;
                    }
                }
                Some(GenerateEvent::Finished { reason, cached_prompt_tokens, .. }) => {
                    cached = Some(cached_prompt_tokens);
                    // A short answer is judged on the tokens it has.
                    out.unsure = judged(judge.take(), unsure_below);
                    out.stop_type = Some(match reason {
                        // An end token, or else a stop word (which never reaches the text).
                        StopReason::Stop if last_id.is_some_and(|id| end_ids.contains(&id)) => {
                            StopType::Eos
                        }
                        StopReason::Stop => StopType::Word,
                        StopReason::Length => StopType::Limit,
                        StopReason::Cancelled => StopType::None,
                    });
                    if out.stop_type == Some(StopType::Word) && request.params.stop.len() == 1 {
                        out.stopping_word = request.params.stop[0].clone();
                    }
                    break;
                }
                Some(GenerateEvent::Error(e)) => return Err(Error::LocalModel(e)),
                None => return Err(Error::LocalModel("the engine stopped mid-generation".into())),
            }
        }
    }
    drop(rx);
    if cached.is_none() {
        cached = cached_rx.try_recv().ok();
    }
    out.cached_tokens = cached.unwrap_or(0);
    match first_token {
        Some(t) => out.predicted_ms = ms(t.elapsed()),
        None => out.prompt_ms = ms(started.elapsed()),
    }
    Ok(out)
}

/// The first tokens' confidence when it is under `threshold` (and there were tokens).
fn judged(judge: Option<(Vec<f32>, Vec<f32>)>, threshold: f32) -> Option<f32> {
    let (logprobs, entropies) = judge?;
    let confidence = LocalConfidence::from_tokens(&logprobs, &entropies)?;
    (CascadePolicy { threshold }.decide(&confidence) == CascadeAction::Escalate)
        .then(|| confidence.score())
}

/// `input_extra` as text to put before the prefix, for a FIM API that takes only a prompt and a
/// suffix (a cloud FIM endpoint): each file under a comment naming its path, in the comment
/// syntax its extension suggests, as repository context appears in code models' training text.
pub fn extra_as_text(extra: &[ExtraFile]) -> String {
    let mut out = String::new();
    for file in extra {
        let extension = file.filename.rsplit_once('.').map_or("", |(_, e)| e);
        let comment = match extension {
            "rs" | "c" | "h" | "cc" | "cpp" | "hpp" | "js" | "jsx" | "ts" | "tsx" | "go"
            | "java" | "kt" | "swift" | "cs" | "scala" | "dart" | "php" | "zig" => "//",
            "lua" | "sql" | "hs" | "elm" | "ada" => "--",
            "lisp" | "clj" | "el" | "scm" => ";;",
            "vim" => "\"",
            _ => "#",
        };
        let _ = writeln!(out, "{comment} Path: {}", file.filename);
        out.push_str(&file.text);
        if !file.text.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Whether the client asked for one line: a stop word that is a line break.
pub fn single_line(request: &InfillRequest) -> bool {
    request.params.stop.iter().any(|s| s == "\n")
}

/// Applies the local model's stop rules (`n_indent`, bracket balance, stop words) to text
/// another model wrote whole; `finished` says whether that model ended on its own (else it hit
/// its length). Returns the outcome's text, `stop_type` and stopping word.
pub fn stop_text(
    request: &InfillRequest,
    text: &str,
    finished: bool,
) -> (String, StopType, String) {
    let mut out = text.to_owned();
    let mut stop = if finished {
        StopType::Eos
    } else {
        StopType::Limit
    };
    let mut word = String::new();
    if let Some((at, w)) = request
        .params
        .stop
        .iter()
        .filter(|w| !w.is_empty())
        .filter_map(|w| out.find(w.as_str()).map(|at| (at, w)))
        .min_by_key(|(at, _)| *at)
    {
        word = w.clone();
        out.truncate(at);
        stop = StopType::Word;
    }
    let cut = [
        IndentRule::new(request.n_indent).check(&out),
        BracketRule::default().check(&out),
    ]
    .into_iter()
    .flatten()
    .min();
    if let Some(cut) = cut {
        out.truncate(cut);
        stop = StopType::Limit;
        word.clear();
    }
    (out, stop, word)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// llama.cpp's `n_indent` rule: once a new line has started, a line whose first non-blank
/// character is indented less than `n_indent` columns ends the completion (cut before that
/// character).
#[derive(Debug)]
struct IndentRule {
    n_indent: usize,
    line_start: usize,
}

impl IndentRule {
    fn new(n_indent: u32) -> Self {
        Self {
            n_indent: n_indent as usize,
            line_start: 0,
        }
    }

    /// Where to cut `text`, if the rule ends it now.
    fn check(&mut self, text: &str) -> Option<usize> {
        if self.n_indent == 0 {
            return None;
        }
        let bytes = text.as_bytes();
        loop {
            if self.line_start > 0 {
                let mut pos = self.line_start;
                while pos < bytes.len() && (bytes[pos] == b' ' || bytes[pos] == b'\t') {
                    pos += 1;
                }
                if pos < bytes.len() && bytes[pos] != b'\n' {
                    if pos - self.line_start < self.n_indent {
                        return Some(pos);
                    }
                } else {
                    // The line's indentation is not known yet.
                    if pos >= bytes.len() {
                        return None;
                    }
                }
            }
            match text[self.line_start..].find('\n') {
                Some(i) => self.line_start += i + 1,
                None => return None,
            }
        }
    }
}

/// Bracket balance for multi-line completions: a new line of the completion that closes a
/// bracket the completion's new lines did not open has left the block the cursor is in, whose
/// end the suffix already holds; the completion ends before that line. The cursor's own line
/// may close what the prefix opened. Brackets in quotes on a line do not count.
#[derive(Debug, Default)]
struct BracketRule {
    /// Bytes of the text already read.
    scanned: usize,
    /// Where the current line starts, once past the cursor's line.
    line_start: Option<usize>,
    depth: i64,
    quote: Option<u8>,
}

impl BracketRule {
    /// Where to cut `text`, if the rule ends it now.
    fn check(&mut self, text: &str) -> Option<usize> {
        let bytes = text.as_bytes();
        while self.scanned < bytes.len() {
            let (at, b) = (self.scanned, bytes[self.scanned]);
            self.scanned += 1;
            if b == b'\n' {
                self.line_start = Some(at + 1);
                self.quote = None;
                continue;
            }
            let Some(line_start) = self.line_start else {
                continue;
            };
            match (self.quote, b) {
                (Some(q), _) if b == q && bytes.get(at.wrapping_sub(1)) != Some(&b'\\') => {
                    self.quote = None;
                }
                (Some(_), _) => {}
                (None, b'"' | b'\'' | b'`') => self.quote = Some(b),
                (None, b'(' | b'[' | b'{') => self.depth += 1,
                (None, b')' | b']' | b'}') => {
                    self.depth -= 1;
                    if self.depth < 0 {
                        // Cut the line break before it too: the suffix starts a line of its own.
                        return Some(line_start - 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_files_become_path_comments_in_their_own_syntax() {
        let extra = [
            ExtraFile {
                filename: "src/util.rs".into(),
                text: "pub const A: u32 = 1;".into(),
            },
            ExtraFile {
                filename: "lib/helpers.py".into(),
                text: "B = 2\n".into(),
            },
        ];
        assert_eq!(
            extra_as_text(&extra),
            "// Path: src/util.rs\npub const A: u32 = 1;\n\n# Path: lib/helpers.py\nB = 2\n\n"
        );
        assert_eq!(extra_as_text(&[]), "");
    }

    #[test]
    fn bracket_rule_ends_before_a_line_that_leaves_the_block() {
        let mut r = BracketRule::default();
        // The cursor's line may close what the prefix opened.
        assert_eq!(r.check("a, b)"), None);
        assert_eq!(r.check("a, b)\n    x = f(1)"), None);
        let text = "a, b)\n    x = f(1)\n}";
        assert_eq!(r.check(text), Some(text.len() - 2));
        // Brackets opened on the new lines may close there; quoted ones do not count.
        let mut r = BracketRule::default();
        let text = "\nif x {\n    s = \")}\";\n}\nreturn s\n}";
        assert_eq!(r.check(text), Some(text.len() - 2));
    }

    #[test]
    fn indent_rule_cuts_at_a_line_less_indented() {
        let mut r = IndentRule::new(4);
        assert_eq!(r.check("x = 1"), None);
        assert_eq!(r.check("x = 1\n    y = 2"), None);
        assert_eq!(r.check("x = 1\n    y = 2\n  "), None);
        let text = "x = 1\n    y = 2\n  z";
        assert_eq!(r.check(text), Some(text.len() - 1));
        let mut off = IndentRule::new(0);
        assert_eq!(off.check("a\nb"), None);
    }

    #[test]
    fn another_model_s_text_gets_the_same_stop_rules() {
        let request = InfillRequest {
            n_indent: 4,
            params: SamplingParams {
                stop: vec!["<END>".into()],
                ..SamplingParams::default()
            },
            ..InfillRequest::default()
        };
        let (text, stop, word) = stop_text(&request, "a = 1\n    b = 2\nc = 3", true);
        assert_eq!(
            (text.as_str(), stop),
            ("a = 1\n    b = 2\n", StopType::Limit)
        );
        assert!(word.is_empty());
        let (text, stop, word) = stop_text(&request, "a<END>b", false);
        assert_eq!(
            (text.as_str(), stop, word.as_str()),
            ("a", StopType::Word, "<END>")
        );
        let (_, stop, _) = stop_text(&request, "a", false);
        assert_eq!(stop, StopType::Limit);
        assert!(single_line(&InfillRequest {
            params: SamplingParams {
                stop: vec!["\n".into()],
                ..SamplingParams::default()
            },
            ..InfillRequest::default()
        }));
    }

    #[test]
    fn indent_rule_skips_blank_lines() {
        let mut r = IndentRule::new(2);
        assert_eq!(r.check("a\n\n  b"), None);
        assert_eq!(r.check("a\n\n  b\nc"), Some(7));
    }

    #[tokio::test]
    async fn a_newer_request_of_a_session_stops_the_older() {
        let sessions = Arc::new(EditorSessions::default());
        let mut old = sessions.enter(Some("editor-1"));
        let other = sessions.enter(Some("editor-2"));
        let new = sessions.enter(Some("editor-1"));
        assert!((&mut old.superseded).await.is_ok());
        drop(old);
        // The newer one keeps its place when the older leaves.
        assert_eq!(sessions.running.lock().len(), 2);
        drop(new);
        drop(other);
        assert!(sessions.running.lock().is_empty());
        let mut none = sessions.enter(None);
        assert!(none.superseded.try_recv().is_err());
    }
}
