//! Cascade execution: the local model starts, the confidence of its first tokens (mean
//! log-probability and entropy) decides whether its answer stands or the request goes to the
//! cloud. The local tokens are held back until that decision, so a client (streamed or not)
//! never sees an answer that is later retracted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tandem_cloud_adapters::{ChatRequest, EventStream};
use tandem_local_model::GenerateEvent;
use tandem_router_policy::{CascadeAction, CascadePolicy, LocalConfidence};

use crate::config::{BackendKind, Price};
use crate::error::Error;
use crate::executor::Executor;
use crate::executor::local::{LocalExecutor, generate_events};

/// What a cascade did.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeOutcome {
    /// The request went to the cloud.
    pub escalated: bool,
    /// The local model's first-token confidence, when it produced tokens.
    pub confidence: Option<LocalConfidence>,
    /// The backend whose answer the client gets.
    pub answered_by: String,
    /// Why the local model could not be judged (it failed to start or errored).
    pub local_error: Option<String>,
}

/// One request's cascade, usable wherever an executor is.
pub struct CascadeExecutor {
    local: LocalExecutor,
    cloud: Arc<dyn Executor>,
    policy: CascadePolicy,
    tokens: u32,
    judge_budget: Duration,
    outcome: Arc<Mutex<Option<CascadeOutcome>>>,
}

impl CascadeExecutor {
    /// A cascade from `local` to `cloud`, judged on `tokens` tokens against `threshold`. A local
    /// model that has not produced them within `judge_budget` is judged too slow: the request
    /// escalates while there is still time for the cloud to answer.
    pub fn new(
        local: LocalExecutor,
        cloud: Arc<dyn Executor>,
        threshold: f32,
        tokens: u32,
        judge_budget: Duration,
    ) -> Self {
        Self {
            local,
            cloud,
            policy: CascadePolicy { threshold },
            tokens: tokens.max(1),
            judge_budget,
            outcome: Arc::new(Mutex::new(None)),
        }
    }

    /// What happened, once the request started.
    pub fn outcome(&self) -> Option<CascadeOutcome> {
        self.outcome.lock().clone()
    }

    fn set(&self, outcome: CascadeOutcome) {
        *self.outcome.lock() = Some(outcome);
    }

    async fn escalate(
        &self,
        request: ChatRequest,
        confidence: Option<LocalConfidence>,
        local_error: Option<String>,
    ) -> Result<EventStream, Error> {
        self.set(CascadeOutcome {
            escalated: true,
            confidence,
            answered_by: self.cloud.backend().to_owned(),
            local_error,
        });
        self.cloud.chat_stream(request).await
    }
}

impl std::fmt::Debug for CascadeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CascadeExecutor")
            .field("local", &self.local.name())
            .field("cloud", &self.cloud.backend())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Executor for CascadeExecutor {
    fn backend(&self) -> &str {
        self.local.name()
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn price(&self) -> Price {
        self.local.price()
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let client_logprobs = request.logprobs;
        let top = request.top_logprobs.unwrap_or(0) as usize;
        let (mut rx, id) = match self.local.start(&request, Some(top)) {
            Ok(started) => started,
            Err(e) => return self.escalate(request, None, Some(e.to_string())).await,
        };
        // Hold the first tokens back while judging them.
        let mut held = Vec::new();
        let (mut logprobs, mut entropies) = (Vec::new(), Vec::new());
        let mut failed = None;
        let judge_by = tokio::time::Instant::now() + self.judge_budget;
        while logprobs.len() < self.tokens as usize {
            let Ok(next) = tokio::time::timeout_at(judge_by, rx.recv()).await else {
                failed = Some(format!(
                    "local model too slow: {} of {} tokens in {} ms",
                    logprobs.len(),
                    self.tokens,
                    self.judge_budget.as_millis()
                ));
                break;
            };
            match next {
                Some(GenerateEvent::Token { id, text, logprob }) => {
                    if let Some(lp) = &logprob {
                        logprobs.push(lp.logprob);
                        entropies.push(lp.entropy);
                    }
                    held.push(GenerateEvent::Token { id, text, logprob });
                }
                Some(done @ GenerateEvent::Finished { .. }) => {
                    held.push(done);
                    break;
                }
                Some(GenerateEvent::Error(message)) => {
                    failed = Some(message);
                    break;
                }
                None => {
                    failed = Some("local engine stopped".to_owned());
                    break;
                }
            }
        }
        let confidence = LocalConfidence::from_tokens(&logprobs, &entropies);
        if let Some(why) = failed {
            drop(rx);
            return self.escalate(request, confidence, Some(why)).await;
        }
        let keep = confidence
            .as_ref()
            .is_some_and(|c| self.policy.decide(c) == CascadeAction::KeepLocal);
        if !keep {
            // Dropping the receiver cancels the local generation.
            drop(rx);
            return self.escalate(request, confidence, None).await;
        }
        self.set(CascadeOutcome {
            escalated: false,
            confidence,
            answered_by: self.local.name().to_owned(),
            local_error: None,
        });
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            Some((event, rx))
        });
        let events = futures::stream::iter(held)
            .chain(rest)
            .map(move |event| match event {
                // The client gets log-probabilities only when it asked for them.
                GenerateEvent::Token { id, text, .. } if !client_logprobs => GenerateEvent::Token {
                    id,
                    text,
                    logprob: None,
                },
                other => other,
            })
            .boxed();
        Ok(generate_events(
            events,
            id,
            request.model.clone(),
            self.local.name().to_owned(),
        ))
    }
}
