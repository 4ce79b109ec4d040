//! The engine on the real SmolLM2 model: generation, determinism, prefix reuse, stop strings,
//! cancellation, scoring and drafting sessions.

mod common;

use tandem_local_model::{
    ChatMessage, FinishReason, GenerateEvent, GenerateRequest, SamplingParams,
};

async fn collect(
    engine: &tandem_local_model::Engine,
    prompt: Vec<u32>,
    params: SamplingParams,
) -> (Vec<u32>, String, GenerateEvent) {
    let mut rx = engine.generate(GenerateRequest { prompt, params }).unwrap();
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerateEvent::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            other => return (ids, text, other),
        }
    }
    panic!("stream ended without a final event");
}

#[tokio::test]
async fn greedy_generation_is_sensible_and_deterministic() {
    let Some(engine) = common::smollm() else {
        return;
    };
    let prompt = engine
        .chat_prompt(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let (ids, text, fin) = collect(&engine, prompt.clone(), SamplingParams::greedy(24)).await;
    eprintln!("{text:?} {fin:?}");
    assert!(!text.trim().is_empty(), "{text}");
    engine.clear_cache().await.unwrap();
    let (ids2, _, _) = collect(&engine, prompt, SamplingParams::greedy(24)).await;
    assert_eq!(ids, ids2);
    assert!(matches!(fin, GenerateEvent::Finished { .. }));
    let _ = FinishReason::Stop;
}
