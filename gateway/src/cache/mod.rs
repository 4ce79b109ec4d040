//! The response cache: dispatch's first step for a route with `[routes."MODEL".cache]`. The key
//! is a hash of the normalized request (model, messages, tools, sampling parameters; the ingress
//! API too when the request carries API-specific fields), so the same question asked over
//! `/v1/chat/completions` and `/v1/messages` shares an answer. The normalized answer is stored,
//! and each hit is encoded for its client like a backend's answer: a whole answer can serve a
//! stream and a stream a whole answer. Only deterministic requests (temperature 0, or a route
//! with `nondeterministic = true`) are cached; `cache-control: no-store` skips the cache and
//! `no-cache` answers fresh and stores the new answer. A semantic route also answers from the
//! nearest cached prompt (the router's MiniLM embedding) asked in the same context.
//!
//! Entries live in the shared state store (`crate::store`: Redis when configured, else the
//! embedded store in the cache directory), under `cache:<hash>` with the route's TTL, and a
//! semantic entry's prompt embedding under `cache-vec:<hash>`. A store that fails or is slow
//! (past `store.timeout_ms`) turns the cache step into a bypass, never an error; the store's
//! own metric and log line say when it goes and comes back.
//!
//! Each replica also keeps the answers it read or wrote in the last [`NEAR_HOLD`] in memory, so
//! a hot entry costs the store one read per second rather than one per request. Entries are
//! keyed by content and never change before they expire, so the copy is the store's answer;
//! the one thing another replica can do to it, store a fresh answer for a `no-cache` request,
//! reaches this replica within [`NEAR_HOLD`].

pub mod semantic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, ChatResponse, EventStream, FinishReason, Message, ResponseBuilder,
    Role, TokenLogprob, ToolCall, Usage, response_events,
};
use tandem_router_policy::Encoder;

use crate::config::{CacheRule, Config};
use crate::metrics::{CacheLabels, Metrics};
use crate::store::SharedStore;
use semantic::Index;

/// Prompts the semantic index keeps in memory.
pub const SEMANTIC_CAPACITY: usize = 10_000;
/// The backend name an answer from the cache carries (metrics, feedback records).
pub const CACHE_BACKEND: &str = "cache";
/// How long a replica answers from its in-memory copy of an entry before reading the store.
pub const NEAR_HOLD: Duration = Duration::from_secs(1);
/// Entries the in-memory copy keeps.
const NEAR_CAPACITY: usize = 4096;
/// Stored bytes the in-memory copy keeps (entries measured as stored).
const NEAR_BYTES: usize = 64 << 20;

/// What the cache did for a request, as sent in `x-tandem-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// The cache answered.
    Hit,
    /// The backends answered; the answer was stored.
    Miss,
    /// The cache was not used (no-store, no-cache, a nondeterministic request, store down).
    Bypass,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// The request's `cache-control` directives that concern the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheDirective {
    /// `no-store`: neither read nor write the cache.
    pub no_store: bool,
    /// `no-cache`: do not answer from the cache (the fresh answer is stored).
    pub no_cache: bool,
}

impl CacheDirective {
    /// Reads `cache-control` (every value, comma-separated directives, any case).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let name = directive.split('=').next().unwrap_or("").trim();
                if name.eq_ignore_ascii_case("no-store") {
                    d.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    d.no_cache = true;
                }
            }
        }
        d
    }
}

/// A stored answer: [`ChatResponse`] in serde form.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedAnswer {
    id: String,
    model: String,
    created: u64,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: FinishReason,
    logprobs: Option<Vec<TokenLogprob>>,
    usage: Usage,
}

impl From<&ChatResponse> for CachedAnswer {
    fn from(a: &ChatResponse) -> Self {
        Self {
            id: a.id.clone(),
            model: a.model.clone(),
            created: a.created,
            text: a.text.clone(),
            tool_calls: a.tool_calls.clone(),
            finish_reason: a.finish_reason,
            logprobs: a.logprobs.clone(),
            usage: a.usage,
        }
    }
}

impl From<CachedAnswer> for ChatResponse {
    fn from(a: CachedAnswer) -> Self {
        Self {
            id: a.id,
            model: a.model,
            created: a.created,
            text: a.text,
            tool_calls: a.tool_calls,
            finish_reason: a.finish_reason,
            logprobs: a.logprobs,
            usage: a.usage,
        }
    }
}

/// One cache entry as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    answer: CachedAnswer,
    expires_ms: u64,
}

/// A semantic entry's prompt, stored beside its answer for the index's rebuild.
#[derive(Debug, Serialize, Deserialize)]
struct Vector {
    /// The context hash, hex.
    context: String,
    /// The prompt's unit embedding.
    vector: Vec<f32>,
    expires_ms: u64,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    crate::store::api::now_ms() as u64
}

/// The store key of an answer.
fn entry_key(key: &str) -> String {
    format!("cache:{key}")
}

/// The prefix of the prompt embeddings' store keys.
const VECTOR_PREFIX: &str = "cache-vec:";

/// An answer from the cache.
#[derive(Debug)]
pub struct Hit {
    /// The stored answer.
    pub answer: ChatResponse,
    /// The similarity of the cached prompt, for a semantic hit.
    pub similarity: Option<f32>,
}

impl Hit {
    /// The `x-tandem-route` explanation: `cache; route X; exact hit`.
    pub fn explanation(&self, model: &str) -> String {
        match self.similarity {
            None => format!("{CACHE_BACKEND}; route {model}; exact hit"),
            Some(s) => format!("{CACHE_BACKEND}; route {model}; semantic hit (similarity {s:.3})"),
        }
    }

    /// The answer as the events of a stream.
    pub fn events(&self) -> EventStream {
        futures::stream::iter(response_events(&self.answer)).boxed()
    }
}

/// What the cache step decided.
#[derive(Debug)]
pub enum Lookup {
    /// The route has no cache.
    Off,
    /// The cache answers.
    Hit(Hit),
    /// The backends answer; `fill` stores their answer when there is one to store.
    Pass {
        /// What `x-tandem-cache` says.
        status: CacheStatus,
        /// Where the answer goes.
        fill: Option<Fill>,
    },
}

impl Lookup {
    fn bypass() -> Self {
        Self::Pass {
            status: CacheStatus::Bypass,
            fill: None,
        }
    }
}

/// Stores a backend's answer once it is complete.
#[derive(Debug)]
pub struct Fill {
    shared: Arc<Shared>,
    key: String,
    ttl: Duration,
    semantic: Option<([u8; 32], Arc<[f32]>)>,
}

impl Fill {
    /// Stores a whole answer; done before the answer goes out, so the next identical request
    /// finds it (bounded by the store's timeout).
    pub async fn whole(self, answer: &ChatResponse) {
        self.put(answer).await;
    }

    /// Passes a stream through and stores its answer when it ends complete (a finish and no
    /// error); a stream the client left is not stored.
    pub fn stream(self, events: EventStream) -> EventStream {
        struct State {
            events: EventStream,
            builder: Option<ResponseBuilder>,
            fill: Option<Fill>,
            finished: bool,
        }
        let state = State {
            events,
            builder: Some(ResponseBuilder::new()),
            fill: Some(self),
            finished: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            match s.events.next().await {
                Some(event) => {
                    match &event {
                        ChatEvent::Finish { .. } => s.finished = true,
                        ChatEvent::Error(_) => s.fill = None,
                        _ => {}
                    }
                    if let Some(b) = &mut s.builder {
                        b.push(event.clone());
                    }
                    Some((event, s))
                }
                None => {
                    if let (Some(fill), Some(builder), true) =
                        (s.fill.take(), s.builder.take(), s.finished)
                        && let Ok(answer) = builder.finish()
                    {
                        fill.whole(&answer).await;
                    }
                    None
                }
            }
        })
        .boxed()
    }

    /// Writes the answer (and a semantic entry's embedding) with the route's TTL; a store that
    /// fails leaves the answer uncached.
    async fn put(self, answer: &ChatResponse) {
        let expires_ms = now_ms() + self.ttl.as_millis() as u64;
        let entry = Entry {
            answer: CachedAnswer::from(answer),
            expires_ms,
        };
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        // What a read of the store would give, kept in memory.
        let kept: ChatResponse = entry.answer.into();
        let size = value.len();
        let store = &self.shared.store;
        if let Err(e) = store
            .set(&entry_key(&self.key), Bytes::from(value), Some(self.ttl))
            .await
        {
            tracing::debug!(error = %e, "the cache could not store an answer");
            return;
        }
        self.shared.near.keep(&self.key, kept, size, expires_ms);
        let Some((context, vector)) = self.semantic else {
            return;
        };
        let stored = Vector {
            context: hex::encode(context),
            vector: vector.to_vec(),
            expires_ms,
        };
        let Ok(value) = serde_json::to_vec(&stored) else {
            return;
        };
        let key = format!("{VECTOR_PREFIX}{}", self.key);
        if store
            .set(&key, Bytes::from(value), Some(self.ttl))
            .await
            .is_ok()
        {
            self.shared
                .index
                .insert(context, vector, self.key, expires_ms);
        }
    }
}

#[derive(Debug)]
struct Shared {
    store: SharedStore,
    /// This replica's copies of recent entries.
    near: Near,
    index: Index,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// The live answer under `key`: this replica's copy while it holds, else the store's.
    async fn read(&self, key: &str) -> Result<Option<ChatResponse>, crate::error::Error> {
        if let Some(answer) = self.near.get(key) {
            return Ok(Some(answer));
        }
        let found = self.store.get(&entry_key(key)).await?;
        let Some(bytes) = found else {
            return Ok(None);
        };
        let Some(entry) = decode_entry(&bytes) else {
            return Ok(None);
        };
        let answer: ChatResponse = entry.answer.into();
        self.near
            .keep(key, answer.clone(), bytes.len(), entry.expires_ms);
        Ok(Some(answer))
    }

    fn count(&self, route: &str, result: &'static str) {
        self.metrics
            .cache
            .get_or_create(&CacheLabels {
                route: route.to_owned(),
                result,
            })
            .inc();
    }
}

/// The response cache (see the module docs).
#[derive(Debug)]
pub struct ResponseCache {
    shared: Option<Arc<Shared>>,
}

impl ResponseCache {
    /// The cache over the shared `store` when any route caches; the semantic index is rebuilt
    /// from the store in the background when any route is semantic.
    pub fn open(config: &Config, store: SharedStore, metrics: Arc<Metrics>) -> Self {
        let rules: Vec<&CacheRule> = config
            .routes
            .values()
            .filter_map(|r| r.cache.as_ref())
            .collect();
        if rules.is_empty() {
            return Self { shared: None };
        }
        let semantic = rules.iter().any(|r| r.semantic.is_some());
        let shared = Arc::new(Shared {
            store,
            near: Near::default(),
            index: Index::new(SEMANTIC_CAPACITY),
            metrics,
        });
        if semantic && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = shared.clone();
            rt.spawn(async move { rebuild_index(&shared).await });
        }
        Self {
            shared: Some(shared),
        }
    }

    /// Prompts in the semantic index.
    pub fn semantic_len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.index.len())
    }

    /// The cache step for `request` on a route with `rule`: a hit, or the status and the fill
    /// for the backends' answer. `encoder` embeds the prompt on a semantic route.
    pub async fn lookup(
        &self,
        request: &ChatRequest,
        rule: Option<&CacheRule>,
        directive: CacheDirective,
        encoder: Option<Arc<Encoder>>,
    ) -> Lookup {
        let (Some(shared), Some(rule)) = (&self.shared, rule) else {
            return Lookup::Off;
        };
        let route = request.model.as_str();
        let deterministic = request.temperature == Some(0.0) || rule.nondeterministic;
        if directive.no_store || !deterministic || request.n > 1 {
            shared.count(route, "bypass");
            return Lookup::bypass();
        }
        let key = hex::encode(request_hash(request, None));
        let semantic = match (rule.semantic, encoder) {
            (Some(min), Some(encoder)) => embed_prompt(request, encoder)
                .await
                .map(|(context, vector)| (context, vector, min)),
            _ => None,
        };
        let fill = Fill {
            shared: shared.clone(),
            key: key.clone(),
            ttl: rule.ttl,
            semantic: semantic.as_ref().map(|(c, v, _)| (*c, v.clone())),
        };
        if directive.no_cache {
            shared.count(route, "bypass");
            return Lookup::Pass {
                status: CacheStatus::Bypass,
                fill: Some(fill),
            };
        }
        let found = match shared.read(&key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "cache bypassed: the store did not answer");
                shared.count(route, "bypass");
                return Lookup::bypass();
            }
        };
        if let Some(answer) = found {
            shared.count(route, "exact_hit");
            return Lookup::Hit(Hit {
                answer,
                similarity: None,
            });
        }
        if let Some((context, vector, min)) = &semantic
            && let Some((near, similarity)) = shared.index.nearest(context, vector, *min)
        {
            match shared.read(&near).await {
                Ok(Some(answer)) => {
                    shared.count(route, "semantic_hit");
                    return Lookup::Hit(Hit {
                        answer,
                        similarity: Some(similarity),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cache bypassed: the store did not answer");
                    shared.count(route, "bypass");
                    return Lookup::bypass();
                }
            }
        }
        shared.count(route, "miss");
        Lookup::Pass {
            status: CacheStatus::Miss,
            fill: Some(fill),
        }
    }
}

/// A stored entry, when it is readable and not expired.
fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    let entry: Entry = serde_json::from_slice(bytes).ok()?;
    (entry.expires_ms > now_ms()).then_some(entry)
}

/// A replica's in-memory copies of entries it read or wrote, each held for [`NEAR_HOLD`] at
/// most and never past the entry's expiry.
#[derive(Debug, Default)]
struct Near {
    entries: parking_lot::Mutex<NearEntries>,
}

/// The copies, each with when it stops holding and its stored size, and their sizes' sum.
#[derive(Debug, Default)]
struct NearEntries {
    map: std::collections::HashMap<String, (Instant, usize, ChatResponse)>,
    bytes: usize,
}

impl Near {
    /// The copy under `key` while it holds.
    fn get(&self, key: &str) -> Option<ChatResponse> {
        let entries = self.entries.lock();
        let (until, _, answer) = entries.map.get(key)?;
        (Instant::now() < *until).then(|| answer.clone())
    }

    /// Keeps `answer`, stored as `size` bytes, which expires at Unix millisecond `expires_ms`.
    fn keep(&self, key: &str, answer: ChatResponse, size: usize, expires_ms: u64) {
        let now = Instant::now();
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let until = now + left.min(NEAR_HOLD);
        let mut entries = self.entries.lock();
        if let Some((_, old, _)) = entries.map.remove(key) {
            entries.bytes -= old;
        }
        if entries.map.len() >= NEAR_CAPACITY || entries.bytes + size > NEAR_BYTES {
            entries.map.retain(|_, (u, _, _)| *u > now);
            entries.bytes = entries.map.values().map(|(_, s, _)| s).sum();
            if entries.map.len() >= NEAR_CAPACITY || entries.bytes + size > NEAR_BYTES {
                entries.map.clear();
                entries.bytes = 0;
            }
        }
        if size <= NEAR_BYTES {
            entries.bytes += size;
            entries.map.insert(key.to_owned(), (until, size, answer));
        }
    }
}

/// Loads the prompt embeddings of the store into the index (the newest [`SEMANTIC_CAPACITY`]).
async fn rebuild_index(shared: &Shared) {
    let listed = match shared.store.list(VECTOR_PREFIX).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "the semantic cache index could not be rebuilt; it starts empty");
            return;
        }
    };
    let now = now_ms();
    let mut vectors: Vec<(String, Vector)> = listed
        .into_iter()
        .filter_map(|(key, value)| {
            let key = key.strip_prefix(VECTOR_PREFIX).unwrap_or(&key).to_owned();
            let v: Vector = serde_json::from_slice(&value).ok()?;
            (v.expires_ms > now).then_some((key, v))
        })
        .collect();
    // Oldest first, so the newest stay when the index is full.
    vectors.sort_unstable_by_key(|(_, v)| v.expires_ms);
    let skip = vectors.len().saturating_sub(SEMANTIC_CAPACITY);
    for (key, v) in vectors.into_iter().skip(skip) {
        let context = hex::decode(&v.context)
            .ok()
            .and_then(|c| <[u8; 32]>::try_from(c).ok());
        if let (Some(context), Some(vector)) = (context, semantic::unit(&v.vector)) {
            shared.index.insert(context, vector, key, v.expires_ms);
        }
    }
    tracing::debug!(prompts = shared.index.len(), "semantic cache index rebuilt");
}

/// The prompt's context hash and unit embedding (the model runs off the async workers); None
/// when the request has no user turn or the encoder fails.
async fn embed_prompt(
    request: &ChatRequest,
    encoder: Arc<Encoder>,
) -> Option<([u8; 32], Arc<[f32]>)> {
    let last = request
        .messages
        .iter()
        .rposition(|m| m.role == Role::User)?;
    let prompt = request.messages[last].joined_text();
    let context = request_hash(request, Some(last));
    let vector = tokio::task::spawn_blocking(move || encoder.embed(&prompt))
        .await
        .ok()?
        .inspect_err(|e| tracing::debug!(error = %e, "prompt embedding failed; exact cache only"))
        .ok()?;
    Some((context, semantic::unit(&vector)?))
}

/// What the key hashes: the normalized request less what does not change the answer (stream,
/// usage reporting, the limit's field name, the end-user id).
#[derive(Serialize)]
struct KeyView<'a> {
    version: u32,
    model: &'a str,
    messages: Vec<&'a Message>,
    /// The index of the message left out (a semantic context), if one is.
    without: Option<usize>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<u64>,
    stop: &'a [String],
    tools: &'a [tandem_cloud_adapters::Tool],
    tool_choice: &'a Option<tandem_cloud_adapters::ToolChoice>,
    parallel_tool_calls: Option<bool>,
    response_format: &'a Option<serde_json::Value>,
    logprobs: bool,
    top_logprobs: Option<u32>,
    n: u32,
    /// API-specific fields go to upstreams of that API only, so with them the API counts.
    extra: Option<(
        Option<tandem_cloud_adapters::WireFormat>,
        &'a serde_json::Map<String, serde_json::Value>,
    )>,
}

/// sha256 of the normalized request; `without` leaves one message out (the semantic context).
pub fn request_hash(request: &ChatRequest, without: Option<usize>) -> [u8; 32] {
    let view = KeyView {
        version: 1,
        model: &request.model,
        messages: request
            .messages
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != without)
            .map(|(_, m)| m)
            .collect(),
        without,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        seed: request.seed,
        stop: &request.stop,
        tools: &request.tools,
        tool_choice: &request.tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        response_format: &request.response_format,
        logprobs: request.logprobs,
        top_logprobs: request.top_logprobs,
        n: request.n,
        extra: (!request.extra.is_empty()).then_some((request.ingress, &request.extra)),
    };
    let bytes = serde_json::to_vec(&view).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

#[cfg(test)]
mod tests {
    use tandem_cloud_adapters::{Message, Role, WireFormat};

    use crate::store::Store;

    use super::*;

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, text),
            ],
            temperature: Some(0.0),
            ..ChatRequest::default()
        }
    }

    #[tokio::test]
    async fn a_hot_entry_is_read_from_the_store_once_per_hold_and_never_past_its_expiry() {
        let store = crate::store::embedded::EmbeddedStore::in_memory();
        let shared = Shared {
            store: store.clone(),
            near: Near::default(),
            index: Index::new(4),
            metrics: Arc::new(Metrics::new()),
        };
        let answer = ChatResponse {
            id: "a".into(),
            model: "m".into(),
            created: 0,
            text: "cached".into(),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            logprobs: None,
            usage: Usage::default(),
        };
        let entry = Entry {
            answer: CachedAnswer::from(&answer),
            expires_ms: now_ms() + 60_000,
        };
        let value = Bytes::from(serde_json::to_vec(&entry).unwrap());
        store.set(&entry_key("k"), value, None).await.unwrap();
        assert_eq!(shared.read("k").await.unwrap().unwrap().text, "cached");
        // Gone from the store, the copy still answers while it holds.
        store.delete(&entry_key("k")).await.unwrap();
        assert_eq!(shared.read("k").await.unwrap().unwrap().text, "cached");
        // An entry that expires sooner than the hold is kept only until it expires.
        shared.near.keep("soon", answer.clone(), 10, now_ms() + 30);
        assert!(shared.near.get("soon").is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(shared.near.get("soon").is_none());
        assert!(shared.read("soon").await.unwrap().is_none());
        // The copies stay within their bytes: a new one that does not fit makes room.
        let later = now_ms() + 60_000;
        shared
            .near
            .keep("big", answer.clone(), NEAR_BYTES - 10, later);
        shared.near.keep("small", answer.clone(), 20, later);
        assert!(shared.near.get("big").is_none());
        assert!(shared.near.get("small").is_some());
        assert_eq!(shared.near.entries.lock().bytes, 20);
    }

    #[test]
    fn the_key_ignores_how_the_answer_is_delivered_and_keeps_what_changes_it() {
        let base = request("hi");
        let mut streamed = base.clone();
        streamed.stream = true;
        streamed.include_usage = true;
        streamed.ingress = Some(WireFormat::Anthropic);
        assert_eq!(request_hash(&base, None), request_hash(&streamed, None));
        let mut hotter = base.clone();
        hotter.temperature = Some(0.5);
        assert_ne!(request_hash(&base, None), request_hash(&hotter, None));
        assert_ne!(
            request_hash(&base, None),
            request_hash(&request("hello"), None)
        );
        // API-specific fields make the API part of the key.
        let mut a = base.clone();
        a.extra.insert("metadata".into(), serde_json::json!({}));
        a.ingress = Some(WireFormat::Anthropic);
        let mut o = a.clone();
        o.ingress = Some(WireFormat::OpenAi);
        assert_ne!(request_hash(&a, None), request_hash(&o, None));
        // The semantic context leaves the last user turn out.
        assert_eq!(
            request_hash(&request("one"), Some(1)),
            request_hash(&request("two"), Some(1))
        );
    }

    #[test]
    fn cache_control_directives_are_read_from_any_value() {
        let mut headers = HeaderMap::new();
        headers.append("cache-control", "max-age=0, No-Store".parse().unwrap());
        let d = CacheDirective::from_headers(&headers);
        assert!(d.no_store && !d.no_cache);
        headers.append("cache-control", "no-cache".parse().unwrap());
        assert!(CacheDirective::from_headers(&headers).no_cache);
    }
}
