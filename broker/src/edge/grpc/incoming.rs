//! Accepted connections with a deadline on their opening: a client must send the HTTP/2
//! connection preface within a set time, or its connection is closed.
//!
//! The HTTP/2 server waits for the preface indefinitely, and its keepalive pings start only
//! after it: without this, a peer that connects and says nothing (or a few bytes, then
//! nothing — a slow-loris) holds a socket and a task for as long as the broker runs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_BYTES: usize = 24;

/// A TCP connection whose reads fail with `TimedOut` once its deadline passed before the
/// client sent the preface's bytes; afterwards it is the plain stream.
#[derive(Debug)]
pub(super) struct OpeningDeadline {
    stream: TcpStream,
    /// Bytes read so far, until the preface's length.
    read: usize,
    /// Until the preface arrived.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl OpeningDeadline {
    pub(super) fn new(stream: TcpStream, within: Duration) -> Self {
        Self {
            stream,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl AsyncRead for OpeningDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(result) = &polled {
            if result.is_ok() && this.deadline.is_some() {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_BYTES {
                    this.deadline = None;
                }
            }
            return polled;
        }
        // Nothing (more) yet: the deadline wakes this read when it passes.
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send the HTTP/2 connection preface in time",
            )));
        }
        polled
    }
}

impl AsyncWrite for OpeningDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for OpeningDeadline {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(within: Duration) -> (OpeningDeadline, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (OpeningDeadline::new(server, within), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_slow_opening_times_out_and_a_whole_preface_lifts_the_deadline() {
        // Silent: the read fails once the deadline passes (the paused clock jumps to it).
        let (mut server, _client) = pair(Duration::from_secs(5)).await;
        let mut buf = [0u8; 64];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // Part of the preface is not enough.
        let (mut server, mut client) = pair(Duration::from_secs(5)).await;
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 14);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // The whole preface: later reads wait as long as they need.
        let (mut server, mut client) = pair(Duration::from_secs(5)).await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut preface = [0u8; PREFACE_BYTES];
        server.read_exact(&mut preface).await.unwrap();
        let late = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = server.read(&mut buf).await.unwrap();
            buf[..n].to_vec()
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(late.await.unwrap(), b"later");
    }
}
