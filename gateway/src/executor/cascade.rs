//! Cascade execution: the local model starts, and either the confidence of its first tokens
//! (mean log-probability and entropy) or the answer check on its whole answer decides whether
//! the answer stands or the request goes to the cloud. The local tokens are held back until that
//! decision, so a client (streamed or not) never sees an answer that is later retracted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tandem_cloud_adapters::{ChatRequest, EventStream};
use tandem_local_model::GenerateEvent;
use tandem_router_policy::{AnswerCheck, CascadeAction, CascadePolicy, LocalConfidence};

use crate::config::{BackendKind, Price};
use crate::error::Error;
use crate::executor::Executor;
use crate::executor::local::{LocalExecutor, generate_events};
use crate::routing::prompt::last_user_text;

/// What a cascade did.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeOutcome {
    /// The request went to the cloud.
    pub escalated: bool,
    /// The confidence of the local tokens judged, when it produced tokens.
    pub confidence: Option<LocalConfidence>,
    /// The answer check's score of the whole local answer, when it judged one.
    pub answer_score: Option<f32>,
    /// The backend whose answer the client gets.
    pub answered_by: String,
    /// Why the local model could not be judged (it failed to start or errored).
    pub local_error: Option<String>,
}

/// How a cascade judges the local model.
#[derive(Debug, Clone)]
pub enum Judge {
    /// Keep the answer when the confidence of its first `tokens` tokens reaches `threshold`; a
    /// kept answer streams on at once.
    FirstTokens {
        /// Confidence threshold in (0, 1].
        threshold: f32,
        /// Tokens judged.
        tokens: u32,
    },
    /// Hold the whole answer and escalate when the answer check scores it at `threshold` or
    /// more.
    Answer {
        /// The answer check.
        check: Arc<AnswerCheck>,
        /// Escalation threshold on its score.
        threshold: f32,
    },
}

/// One request's cascade, usable wherever an executor is.
pub struct CascadeExecutor {
    local: LocalExecutor,
    cloud: Arc<dyn Executor>,
    judge: Judge,
    judge_budget: Duration,
    outcome: Arc<Mutex<Option<CascadeOutcome>>>,
}

impl CascadeExecutor {
    /// A cascade from `local` to `cloud`, judged by `judge`. A local model that has not produced
    /// what the judge reads within `judge_budget` is judged too slow: the request escalates while
    /// there is still time for the cloud to answer.
    pub fn new(
        local: LocalExecutor,
        cloud: Arc<dyn Executor>,
        judge: Judge,
        judge_budget: Duration,
    ) -> Self {
        Self {
            local,
            cloud,
            judge,
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
        answer_score: Option<f32>,
        local_error: Option<String>,
    ) -> Result<EventStream, Error> {
        self.set(CascadeOutcome {
            escalated: true,
            confidence,
            answer_score,
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
            .field("judge", &self.judge)
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
            Err(e) => {
                return self
                    .escalate(request, None, None, Some(e.to_string()))
                    .await;
            }
        };
        // Hold the tokens back while judging them: the first few, or the whole answer.
        let wanted = match &self.judge {
            Judge::FirstTokens { tokens, .. } => (*tokens).max(1) as usize,
            Judge::Answer { .. } => usize::MAX,
        };
        let mut held = Vec::new();
        let (mut logprobs, mut entropies) = (Vec::new(), Vec::new());
        let (mut answer, mut seen) = (String::new(), 0usize);
        let mut failed = None;
        let judge_by = tokio::time::Instant::now() + self.judge_budget;
        while seen < wanted {
            let Ok(next) = tokio::time::timeout_at(judge_by, rx.recv()).await else {
                let budget = self.judge_budget.as_millis();
                failed = Some(match &self.judge {
                    Judge::Answer { .. } => {
                        format!("local model too slow: no whole answer in {budget} ms")
                    }
                    Judge::FirstTokens { .. } => {
                        format!("local model too slow: {seen} of {wanted} tokens in {budget} ms")
                    }
                });
                break;
            };
            match next {
                Some(GenerateEvent::Token { id, text, logprob }) => {
                    if let Some(lp) = &logprob {
                        logprobs.push(lp.logprob);
                        entropies.push(lp.entropy);
                    }
                    seen += 1;
                    answer.push_str(&text);
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
            return self.escalate(request, confidence, None, Some(why)).await;
        }
        let (keep, answer_score) = match &self.judge {
            Judge::FirstTokens { threshold, .. } => {
                let policy = CascadePolicy {
                    threshold: *threshold,
                };
                let keep = confidence
                    .as_ref()
                    .is_some_and(|c| policy.decide(c) == CascadeAction::KeepLocal);
                (keep, None)
            }
            Judge::Answer { check, threshold } => {
                let score = check.score(&last_user_text(&request), &answer);
                (score < *threshold, Some(score))
            }
        };
        if !keep {
            // Dropping the receiver cancels the local generation.
            drop(rx);
            return self.escalate(request, confidence, answer_score, None).await;
        }
        self.set(CascadeOutcome {
            escalated: false,
            confidence,
            answer_score,
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
