use tandem_local_model::fetch::{ProcessEnv, default_cache_root, locate};
use tandem_local_model::{ChatMessage, Engine, EngineConfig};
#[tokio::test]
async fn dbg() {
    let root = default_cache_root(&ProcessEnv);
    let path = locate(&root, "smollm2-135m")
        .unwrap()
        .primary()
        .to_path_buf();
    let e = Engine::start(EngineConfig::new(path).threads(1)).unwrap();
    let p = e
        .chat_prompt(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let s = e.open_session(&p).await.unwrap();
    let sc = e.append(s, &[504, 3575], 3).await.unwrap();
    eprintln!("{:?}\nnext {:?}", sc.positions, sc.next_top);
    let sc2 = e.score(&p, &[504, 3575], 3).await.unwrap();
    eprintln!("{:?}\nnext {:?}", sc2.positions, sc2.next_top);
}
