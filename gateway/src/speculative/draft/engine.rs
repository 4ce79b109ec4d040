//! The local model as drafter when it shares the target's vocabulary (checked by hash).

use tandem_local_model::{Engine, SamplingParams, SessionId};

use super::{BoxFuture, Drafter, common_prefix, engine_error};
use crate::error::{Error, Result};

/// An engine session mirrored on this side, re-synced to each round's committed sequence.
#[derive(Debug)]
pub(crate) struct MirroredSession {
    engine: Engine,
    session: Option<SessionId>,
    /// What the engine's session holds (context plus the last draft).
    tokens: Vec<u32>,
    eos: Vec<u32>,
}

impl MirroredSession {
    pub(crate) fn new(engine: Engine) -> Self {
        let eos = engine.info().eos_token_ids.clone();
        Self {
            engine,
            session: None,
            tokens: Vec::new(),
            eos,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Brings the session to exactly `context`, reusing the common prefix.
    pub(crate) async fn sync(&mut self, context: &[u32]) -> Result<()> {
        if context.is_empty() {
            return Err(Error::LocalModel("draft context is empty".into()));
        }
        let common = common_prefix(&self.tokens, context);
        match self.session {
            Some(id) if common > 0 => {
                if common < self.tokens.len() {
                    self.engine
                        .rollback(id, self.tokens.len() - common)
                        .await
                        .map_err(engine_error)?;
                    self.tokens.truncate(common);
                }
                if common < context.len() {
                    self.engine
                        .append(id, &context[common..], 0)
                        .await
                        .map_err(engine_error)?;
                    self.tokens.extend_from_slice(&context[common..]);
                }
            }
            _ => {
                if let Some(old) = self.session.take() {
                    self.engine.close_session(old).await;
                }
                self.session = Some(
                    self.engine
                        .open_session(context)
                        .await
                        .map_err(engine_error)?,
                );
                self.tokens = context.to_vec();
            }
        }
        Ok(())
    }

    /// Drafts `k` tokens greedily after the synced context, stopping after an end token.
    pub(crate) async fn draft_greedy(&mut self, k: usize) -> Result<Vec<u32>> {
        let Some(id) = self.session else {
            return Err(Error::LocalModel("draft before sync".into()));
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let drafted = self
            .engine
            .draft(id, k, &SamplingParams::greedy(k))
            .await
            .map_err(engine_error)?;
        let mut out: Vec<u32> = drafted.iter().map(|t| t.id).collect();
        self.tokens.extend_from_slice(&out);
        if let Some(pos) = out.iter().position(|t| self.eos.contains(t)) {
            out.truncate(pos + 1);
        }
        Ok(out)
    }

    pub(crate) async fn close(&mut self) {
        if let Some(id) = self.session.take() {
            self.engine.close_session(id).await;
        }
        self.tokens.clear();
    }
}

/// Drafts with a local engine whose tokenizer is the target's.
#[derive(Debug)]
pub struct EngineDrafter {
    session: MirroredSession,
}

impl EngineDrafter {
    /// A drafter over `engine`; errors unless its vocabulary hash equals `target_vocab_hash`
    /// (token ids would mean different things otherwise; use [`super::CrossTokenizerDrafter`]).
    pub fn new(engine: Engine, target_vocab_hash: &str) -> Result<Self> {
        let own = &engine.info().vocab_hash;
        if own != target_vocab_hash {
            return Err(Error::LocalModel(format!(
                "drafter vocabulary {own} differs from the target's {target_vocab_hash}; use the cross-tokenizer drafter"
            )));
        }
        Ok(Self {
            session: MirroredSession::new(engine),
        })
    }
}

impl Drafter for EngineDrafter {
    fn name(&self) -> &'static str {
        "engine"
    }

    fn draft<'a>(&'a mut self, context: &'a [u32], k: usize) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            self.session.sync(context).await?;
            self.session.draft_greedy(k).await
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.session.close())
    }
}
