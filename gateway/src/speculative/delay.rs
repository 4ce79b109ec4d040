//! A tower layer that makes a local target behave like a remote large model: every response is
//! held until one network round trip plus one model step after the request arrived, and each
//! later frame of a streamed (SSE) body until one step after the previous one. The real model
//! still computes the answer; when it is slower than the emulated step, its own time shows.
//!
//! Verification of `k` tokens costs about one step (one forward pass over a few tokens is
//! memory-bound on a large GPU model), so a verify call is one round trip plus one step, and
//! plain streaming is one round trip plus one step per token.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

/// Emulated network and model timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DelayConfig {
    /// Network round trip added once per request.
    pub rtt: Duration,
    /// Time of one model step (one forward pass).
    pub step: Duration,
}

/// The layer.
#[derive(Debug, Clone, Copy)]
pub struct DelayLayer {
    cfg: DelayConfig,
}

impl DelayLayer {
    /// A layer with the given timing.
    pub fn new(cfg: DelayConfig) -> Self {
        Self { cfg }
    }
}

impl<S> Layer<S> for DelayLayer {
    type Service = Delay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Delay {
            inner,
            cfg: self.cfg,
        }
    }
}

// ===== impl Delay =====

/// The service: holds responses back to the emulated timing.
#[derive(Debug, Clone)]
pub struct Delay<S> {
    inner: S,
    cfg: DelayConfig,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Delay<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<PacedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let release = Instant::now() + self.cfg.rtt + self.cfg.step;
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: Box::pin(sleep_until(release)),
            response: None,
            step: self.cfg.step,
        }
    }
}

pin_project! {
    /// Waits for the inner response, then for the release time.
    pub struct ResponseFuture<F: Future> {
        #[pin]
        inner: F,
        sleep: Pin<Box<Sleep>>,
        response: Option<F::Output>,
        step: Duration,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<PacedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.response.is_none() {
            let out = ready!(this.inner.poll(cx));
            *this.response = Some(out);
        }
        ready!(this.sleep.as_mut().poll(cx));
        let step = *this.step;
        match this.response.take() {
            Some(Ok(resp)) => {
                let streamed = resp
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                Poll::Ready(Ok(resp.map(|body| PacedBody {
                    inner: body,
                    step: streamed.then_some(step),
                    sleep: None,
                })))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
            // Polled after completion: the response was already taken.
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// A body whose data frames are spaced one step apart (streamed bodies only).
    pub struct PacedBody<B> {
        #[pin]
        inner: B,
        step: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            *this.sleep = None;
        }
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(step), Some(Ok(f))) = (*this.step, frame.as_ref()) {
            // The first frame leaves with the response's own delay; each data frame holds the
            // next one back by a step.
            if f.is_data() {
                *this.sleep = Some(Box::pin(sleep_until(Instant::now() + step)));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
