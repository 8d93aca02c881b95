//! Request bodies that cannot hold the daemon: a deadline that a client must keep
//! up with, and reads bounded in size.
//!
//! Every request body is wrapped in a [`TimedBody`] by the accept loop. A body gets
//! a grace period, then must keep an average of at least a minimum rate, and may
//! never pause longer than an idle limit; past either, reading it fails with
//! [`BodyTimeout`] and the connection is closed. Only time spent waiting on the
//! client counts: the clock starts when the handler first reads the body, and stops
//! from the moment a piece is handed over until the reader asks for the next one, so a
//! server that reads slowly (a blob write, an ingress upstream that applies
//! backpressure) is not charged to the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

/// How quickly a request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    /// Time every body gets before the minimum rate applies.
    pub grace: Duration,
    /// Slowest average rate, in bytes per second, after the grace.
    pub min_rate: u64,
    /// Longest pause between two pieces.
    pub idle: Duration,
}

impl BodyPolicy {
    pub fn from_config(api: &crate::config::ApiConfig) -> Self {
        BodyPolicy {
            grace: Duration::from_secs(api.body_grace_seconds),
            min_rate: api.body_min_bytes_per_second.max(1),
            idle: Duration::from_secs(api.body_idle_seconds),
        }
    }

    fn deadline(&self, started: Instant, received: u64, last: Instant) -> Instant {
        let by_rate = started + self.grace + Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        by_rate.min(last + self.idle)
    }
}

/// The error a body read fails with when the client is too slow.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct BodyTimeout;

/// Whether `e` (or what caused it) is a [`BodyTimeout`].
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A body with the deadline of [`BodyPolicy`].
pub struct TimedBody<B> {
    inner: B,
    policy: BodyPolicy,
    /// Set at the first poll: (start, bytes so far, last progress).
    progress: Option<(Instant, u64, Instant)>,
    /// When the last piece was handed to the reader, until it asks for more.
    handed: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timed_out: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, policy: BodyPolicy) -> Self {
        TimedBody {
            inner,
            policy,
            progress: None,
            handed: None,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + policy.grace)),
            timed_out: false,
        }
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        match (&mut this.progress, this.handed.take()) {
            (None, _) => {
                let now = Instant::now();
                this.progress = Some((now, 0, now));
                this.timer.as_mut().reset(this.policy.deadline(now, 0, now));
            }
            // The reader held the last piece since `handed`: that time is the server's.
            (Some((started, received, last)), Some(handed)) => {
                let server_time = handed.elapsed();
                *started += server_time;
                *last += server_time;
                this.timer.as_mut().reset(this.policy.deadline(*started, *received, *last));
            }
            (Some(_), None) => {}
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((started, received, last))) = (frame.data_ref(), this.progress.as_mut()) {
                    if !data.is_empty() {
                        let now = Instant::now();
                        *received += data.len() as u64;
                        *last = now;
                        let deadline = this.policy.deadline(*started, *received, *last);
                        this.timer.as_mut().reset(deadline);
                        this.handed = Some(now);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.timed_out = true;
                    Poll::Ready(Some(Err(Box::new(BodyTimeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why reading a bounded body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("the request body arrived too slowly")]
    TimedOut,
    #[error("could not read the request body: {0}")]
    Broken(String),
}

/// Reads a body of at most `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Err(e) if is_timeout(e.as_ref()) => Err(BodyError::TimedOut),
        Err(e) => Err(BodyError::Broken(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grace_ms: u64, rate: u64, idle_ms: u64) -> BodyPolicy {
        BodyPolicy { grace: Duration::from_millis(grace_ms), min_rate: rate, idle: Duration::from_millis(idle_ms) }
    }

    /// A body fed by hand through a channel.
    fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        (tx, Body::new(Chan(rx)))
    }

    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_after_the_grace() {
        let (tx, inner) = channel_body();
        let body = Body::new(TimedBody::new(inner, policy(2000, 1000, 60_000)));
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let read = tokio::spawn(read_limited(body, 1 << 20));
        // Paused time runs ahead to the deadline: grace plus one byte at 1000 B/s.
        let r = read.await.unwrap();
        assert!(matches!(r, Err(BodyError::TimedOut)), "{r:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_keeping_the_rate_is_read_whole() {
        let (tx, inner) = channel_body();
        let body = Body::new(TimedBody::new(inner, policy(1000, 100, 5000)));
        let read = tokio::spawn(read_limited(body, 1 << 20));
        for _ in 0..10 {
            tx.send(Bytes::from(vec![b'a'; 200])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        drop(tx);
        assert_eq!(read.await.unwrap().unwrap().len(), 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_pause_times_out_even_with_credit() {
        let (tx, inner) = channel_body();
        let body = Body::new(TimedBody::new(inner, policy(1000, 1, 3000)));
        let read = tokio::spawn(read_limited(body, 1 << 20));
        tx.send(Bytes::from(vec![0u8; 100_000])).await.unwrap();
        // 100 kB at 1 B/s buys a day, but the idle limit is 3 s.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(read.await.unwrap(), Err(BodyError::TimedOut)));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_holds_a_piece_is_not_charged_to_the_client() {
        let (tx, inner) = channel_body();
        let mut body = TimedBody::new(inner, policy(1000, 1000, 3000));
        tx.send(Bytes::from(vec![0u8; 10])).await.unwrap();
        tx.send(Bytes::from(vec![0u8; 10])).await.unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), 10);
        // The reader (say, an upstream applying backpressure) takes a minute before
        // it asks for more: far past the grace, the rate and the idle limit.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), 10);
        // Then the client stalls: its own time still counts, from where it was.
        let started = Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(is_timeout(e.as_ref()), "{e}");
        let waited = started.elapsed();
        assert!(waited > Duration::from_millis(500) && waited <= Duration::from_secs(3), "{waited:?}");
        drop(tx);
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let r = read_limited(Body::from(vec![0u8; 2048]), 1024).await;
        assert!(matches!(r, Err(BodyError::TooLarge(1024))));
    }
}
