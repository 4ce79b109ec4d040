//! A response body with a deadline: when it passes before the body ends (or, in first-frame mode,
//! before the first data frame), the inner body is dropped, which cancels the upstream work, and
//! one final error frame is sent so the stream never ends silently.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Which part of the body the deadline covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineMode {
    /// Until the first data frame.
    FirstFrame,
    /// Until the end of the body.
    WholeBody,
}

/// See the module docs.
pub struct DeadlineBody {
    inner: Option<Body>,
    sleep: Option<Pin<Box<Sleep>>>,
    mode: DeadlineMode,
    error_frame: Option<Bytes>,
}

impl DeadlineBody {
    /// Wraps `inner`; at `deadline` it sends `error_frame` and ends.
    pub fn new(inner: Body, deadline: Instant, mode: DeadlineMode, error_frame: Bytes) -> Self {
        Self {
            inner: Some(inner),
            sleep: Some(Box::pin(tokio::time::sleep_until(deadline))),
            mode,
            error_frame: Some(error_frame),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.error_frame.take().map(|b| Ok(Frame::data(b))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.mode == DeadlineMode::FirstFrame && frame.is_data() {
                    this.sleep = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.sleep = None;
                this.error_frame = None;
                Poll::Ready(other)
            }
            Poll::Pending => match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.inner = None;
                    this.sleep = None;
                    Poll::Ready(this.error_frame.take().map(|b| Ok(Frame::data(b))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.error_frame.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if self.sleep.is_none() => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

use std::future::Future as _;
