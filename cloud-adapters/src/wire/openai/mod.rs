//! OpenAI's chat/completions wire format, one file per direction:
//!
//! - `ingress`: a client's chat request decoded into a [`ChatRequest`](crate::ChatRequest);
//! - `egress`: an answer encoded for an OpenAI client (`chat.completion` JSON, SSE chunks);
//! - `upstream`: the request body sent to an OpenAI-format server;
//! - `parse`: that server's answer and stream read back, or a whole answer passed on as it came;
//! - `error`: OpenAI's error body, sent and read;
//! - `completions`: the legacy `/v1/completions` API;
//! - `embeddings`: `/v1/embeddings` (request, answer, an upstream's usage);
//! - `responses`, `responses_egress`: the Responses API (`/v1/responses`) in, and out as a
//!   `response` object or its typed SSE events.

mod completions;
mod egress;
mod embeddings;
mod error;
mod ingress;
mod parse;
mod responses;
mod responses_egress;
mod upstream;

pub use completions::{
    CompletionChunkEncoder, CompletionRequest, Prompt, decode_completion_request,
    encode_completion_response,
};
pub use egress::{ChatCompletion, ChunkEncoder, encode_chat_response, finish_reason_str};
pub use embeddings::{
    EmbeddingInput, EmbeddingsRequest, EncodingFormat, MAX_EMBEDDING_INPUTS, base64_f32,
    decode_embeddings_request, embeddings_prompt_tokens, encode_embeddings_response,
};
pub use error::{error_body, error_body_bytes, parse_error_body};
pub use ingress::decode_chat_request;
pub use parse::{ChunkDecoder, parse_chat_response, parse_finish_reason, pass_chat_response};
pub use responses::{ResponsesRequest, decode_responses_request, item_id};
pub use responses_egress::{
    ResponseHead, ResponsesEncoder, encode_response, usage_from_json, usage_json,
};
pub use upstream::{
    ChatCompletionsRequest, StreamOptions, UpstreamContent, UpstreamFunction, UpstreamFunctionCall,
    UpstreamImage, UpstreamMessage, UpstreamPart, UpstreamTool, UpstreamToolCall,
};
