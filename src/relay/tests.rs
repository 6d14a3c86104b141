use super::*;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Any `AsyncRead + AsyncWrite` as a relay stream, through a buffer of its
/// own: what the pumps do is tested here over in-memory pipes; the
/// daemon's `tls::Stream` (no copy) is tested in tests/it/tls_stream.rs and by
/// the end-to-end suites.
struct Copying<T> {
    rd: tokio::io::ReadHalf<T>,
    wr: tokio::io::WriteHalf<T>,
    buf: Vec<u8>,
    segment: [Range<usize>; 1],
}

impl<T: AsyncRead + AsyncWrite> Copying<T> {
    fn new(stream: T) -> Copying<T> {
        let (rd, wr) = tokio::io::split(stream);
        #[allow(clippy::single_range_in_vec_init, reason = "one segment, as a slice of segments")]
        let segment = [0..0];
        Copying { rd, wr, buf: vec![0; 8192], segment }
    }
}

struct CopyRead<'a, T> {
    rd: &'a mut tokio::io::ReadHalf<T>,
    buf: &'a mut Vec<u8>,
    segment: &'a mut [Range<usize>; 1],
}

impl<T: AsyncRead> Source for CopyRead<'_, T> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.segment[0].is_empty() {
            return Poll::Ready(Ok(true));
        }
        let mut read = ReadBuf::new(self.buf);
        ready!(Pin::new(&mut *self.rd).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.segment[0] = 0..n;
        Poll::Ready(Ok(n > 0))
    }
    fn plaintext(&mut self) -> (&mut [u8], &[Range<usize>]) {
        (self.buf, &self.segment[..])
    }
    fn consume(&mut self, n: usize) {
        self.segment[0].start += n;
    }
    fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

struct CopyWrite<'a, T> {
    wr: &'a mut tokio::io::WriteHalf<T>,
    sent: usize,
}

impl<T: AsyncWrite> Sink for CopyWrite<'_, T> {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        segments: &[Range<usize>],
        n: usize,
    ) -> Poll<io::Result<()>> {
        let bytes = &buf[segments[0].start..segments[0].start + n];
        while self.sent < n {
            self.sent += ready!(Pin::new(&mut *self.wr).poll_write(cx, &bytes[self.sent..]))?;
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl<T: AsyncWrite> AsyncWrite for CopyWrite<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.wr).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.wr).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.wr).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Send> Duplex for Copying<T> {
    type Source<'a>
        = CopyRead<'a, T>
    where
        T: 'a;
    type Sink<'a>
        = CopyWrite<'a, T>
    where
        T: 'a;
    fn halves(&mut self) -> (CopyRead<'_, T>, CopyWrite<'_, T>) {
        let Copying { rd, wr, buf, segment } = self;
        (CopyRead { rd, buf, segment }, CopyWrite { wr, sent: 0 })
    }
}

const RELEASE_RQ: [u8; 10] = [0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0];
const RELEASE_RP: [u8; 10] = [0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0];
const OUR_ABORT: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0];

fn pdata(len: usize, fill: u8) -> Vec<u8> {
    let mut v = vec![0x04, 0];
    v.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    v.extend(std::iter::repeat_n(fill, len));
    v
}

fn settings() -> RelaySettings {
    RelaySettings {
        idle: Duration::from_secs(300),
        closing: Duration::from_secs(5),
        max_to_backend: 1 << 20,
        max_to_client: 1 << 20,
        mode: RelayMode::Dicom,
        end_by: None,
    }
}

fn counters() -> Counters {
    Counters {
        to_backend: prometheus::IntCounter::new("b", "b").unwrap(),
        to_client: prometheus::IntCounter::new("c", "c").unwrap(),
        dimse: None,
    }
}

/// (client peer, backend peer, relay task)
fn start(
    settings: RelaySettings,
    force: CancellationToken,
) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<RelayReport>) {
    let (client_peer, client_side) = duplex(8192);
    let (backend_peer, backend_side) = duplex(8192);
    let task = tokio::spawn(relay(Copying::new(client_side), Copying::new(backend_side), settings, counters(), force));
    (client_peer, backend_peer, task)
}

async fn read_all(s: &mut DuplexStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.unwrap();
    v
}

#[tokio::test]
async fn release_passes_bytes_unchanged_and_is_recorded() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    let mut sent = pdata(100_000, 7);
    sent.extend(RELEASE_RQ);
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            let mut rp = [0u8; 10];
            client.read_exact(&mut rp).await.unwrap();
            assert_eq!(rp, RELEASE_RP);
            client.shutdown().await.unwrap();
            read_all(&mut client).await
        })
    };
    let mut got = vec![0u8; sent.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, sent);
    backend.write_all(&RELEASE_RP).await.unwrap();
    assert!(read_all(&mut backend).await.is_empty(), "EOF after the client closed");
    backend.shutdown().await.unwrap();
    assert!(writer.await.unwrap().is_empty());
    let report = task.await.unwrap();
    assert!(matches!(report.end, RelayEnd::Released), "{:?}", report.end);
    assert_eq!(report.bytes_to_backend, sent.len() as u64);
    assert_eq!(report.bytes_to_client, 10);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_flowing() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    client.write_all(&pdata(10, 1)).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = read_all(&mut backend).await;
    assert_eq!(got, pdata(10, 1));
    let writer = tokio::spawn(async move {
        backend.write_all(&pdata(50_000, 2)).await.unwrap();
        backend.shutdown().await.unwrap();
    });
    got = read_all(&mut client).await;
    writer.await.unwrap();
    assert_eq!(got, pdata(50_000, 2));
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Closed { by: Side::Client }), "{end:?}");
}

#[tokio::test]
async fn peer_abort_is_forwarded_not_doubled() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    let abort = [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    backend.write_all(&abort).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, abort);
    client.shutdown().await.unwrap();
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Aborted { by: Side::Backend, source: 0, reason: 0 }), "{end:?}");
    assert!(read_all(&mut client).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn idle_association_is_aborted_on_both_sides() {
    let mut s = settings();
    s.idle = Duration::from_secs(3);
    let (mut client, mut backend, task) = start(s, CancellationToken::new());
    client.write_all(&pdata(4, 0)).await.unwrap();
    let mut first = vec![0u8; 10];
    backend.read_exact(&mut first).await.unwrap();
    // Nothing more: after 3 s of silence both peers get A-ABORT and EOF.
    assert_eq!(read_all(&mut client).await, OUR_ABORT);
    assert_eq!(read_all(&mut backend).await, OUR_ABORT);
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
}

/// `timeouts.association`: an association that keeps sending (so the idle
/// timer never fires) still ends at its lifetime, with A-ABORT both ways.
#[tokio::test(start_paused = true)]
async fn a_busy_association_ends_at_its_lifetime() {
    let mut s = settings();
    s.idle = Duration::from_secs(2);
    s.end_by = Some(Instant::now() + Duration::from_secs(10));
    let (mut client, mut backend, task) = start(s, CancellationToken::new());
    let chatter = tokio::spawn(async move {
        // One small PDU a second, far more than the lifetime allows.
        for _ in 0..60 {
            if client.write_all(&pdata(4, 0)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        read_all(&mut client).await
    });
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::LifetimeExceeded), "{end:?}");
    assert!(got.ends_with(&OUR_ABORT), "the backend got our A-ABORT last");
    assert!(got.len() >= 10 * 10, "the association was busy until then: {} bytes", got.len());
    assert_eq!(chatter.await.unwrap(), OUR_ABORT);
}

#[tokio::test]
async fn unknown_pdu_type_aborts_both_sides() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    let mut bad = pdata(3, 9);
    bad.extend([0x42, 0, 0, 0, 0, 1, 0]);
    client.write_all(&bad).await.unwrap();
    let mut expect_backend = pdata(3, 9);
    expect_backend.extend(OUR_ABORT);
    assert_eq!(read_all(&mut backend).await, expect_backend);
    assert_eq!(read_all(&mut client).await, OUR_ABORT);
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::ProtocolError { by: Side::Client, .. }), "{end:?}");
}

#[tokio::test]
async fn truncated_pdu_closes_without_a_corrupting_abort() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    let p = pdata(100, 3);
    client.write_all(&p[..50]).await.unwrap();
    client.shutdown().await.unwrap();
    // The backend gets the partial PDU and EOF, never an A-ABORT spliced into it.
    assert_eq!(read_all(&mut backend).await, p[..50].to_vec());
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Truncated { by: Side::Client, how: Truncation::MidPdu }), "{end:?}");
}

#[tokio::test]
async fn forced_shutdown_aborts_both_sides() {
    let force = CancellationToken::new();
    let (mut client, mut backend, task) = start(settings(), force.clone());
    client.write_all(&pdata(1, 0)).await.unwrap();
    let mut got = vec![0u8; 7];
    backend.read_exact(&mut got).await.unwrap();
    force.cancel();
    assert_eq!(read_all(&mut client).await, OUR_ABORT);
    assert_eq!(read_all(&mut backend).await, OUR_ABORT);
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Shutdown), "{end:?}");
}

/// Issue 11 ("honest ends"): the client finished cleanly, then the SCP's
/// direction failed; the failure is the association's end, not "closed".
#[tokio::test]
async fn a_failure_after_the_other_direction_finished_wins() {
    let (mut client, mut backend, task) = start(settings(), CancellationToken::new());
    client.write_all(&pdata(10, 1)).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = vec![0u8; 16];
    backend.read_exact(&mut got).await.unwrap();
    // Half a PDU, then the SCP closes.
    backend.write_all(&pdata(100, 2)[..40]).await.unwrap();
    backend.shutdown().await.unwrap();
    let _ = read_all(&mut client).await;
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Truncated { by: Side::Backend, how: Truncation::MidPdu }), "{end:?}");
}

/// A stream whose EOF is reported the way tokio-rustls reports a TCP close
/// without close_notify.
struct NoCloseNotify(DuplexStream);

impl AsyncRead for NoCloseNotify {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                std::task::Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for NoCloseNotify {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_close_without_close_notify_is_truncated_not_closed() {
    let (mut client, client_side) = duplex(8192);
    let (mut backend, backend_side) = duplex(8192);
    let (client_side, backend_side) = (Copying::new(NoCloseNotify(client_side)), Copying::new(backend_side));
    let task = tokio::spawn(relay(client_side, backend_side, settings(), counters(), CancellationToken::new()));
    client.write_all(&pdata(10, 1)).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = vec![0u8; 16];
    backend.read_exact(&mut got).await.unwrap();
    backend.shutdown().await.unwrap();
    let _ = read_all(&mut client).await;
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::Truncated { by: Side::Client, how: Truncation::NoCloseNotify }), "{end:?}");
}

/// PDV items carrying `data` in fragments of `frag` bytes, all in one P-DATA-TF.
fn pdata_of_pdvs(data: &[u8], command: bool, frag: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let chunks: Vec<&[u8]> = data.chunks(frag).collect();
    for (i, c) in chunks.iter().enumerate() {
        body.extend_from_slice(&u32::try_from(c.len() + 2).unwrap().to_be_bytes());
        body.push(1);
        body.push(u8::from(command) | (u8::from(i + 1 == chunks.len()) << 1));
        body.extend_from_slice(c);
    }
    let mut pdu = vec![0x04, 0];
    pdu.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    pdu.extend(body);
    pdu
}

/// Issue 11: one association sending 200,000 P-DATA-TF PDUs of one 1-byte
/// PDV each, fragmented command sets (one byte per PDV, many PDVs per PDU)
/// and an oversized command set: the direction's heap stays within
/// [`HEAP_PER_DIRECTION`], and what it keeps afterwards is the read buffer
/// and a small command buffer, not the peak.
#[tokio::test]
async fn any_pdu_mix_keeps_a_direction_within_its_heap_bound() {
    use crate::dicom::command_set::{push_element, tests::store_rsp};
    let mut stream = Vec::new();
    for _ in 0..200_000 {
        stream.extend(pdata_of_pdvs(&[0], false, 1));
    }
    for _ in 0..200 {
        stream.extend(pdata_of_pdvs(&store_rsp(0), true, 1));
    }
    let mut big = store_rsp(0);
    push_element(&mut big, 0x1030, &vec![b'A'; dimse::MAX_COMMAND - 200]);
    stream.extend(pdata_of_pdvs(&big, true, 16_000));
    stream.extend(pdata_of_pdvs(&store_rsp(0), true, 3));
    let total = stream.len();

    // Over real sockets and the daemon's stream type: its receive buffer
    // is part of the bound.
    let (mut peer, side) = tcp_pair().await;
    let (drain, out) = tcp_pair().await;
    let writer = tokio::spawn(async move {
        peer.write_all(&stream).await.unwrap();
        peer.shutdown().await.unwrap();
    });
    let drained = tokio::spawn(async move {
        let mut drain = drain;
        let mut sink = vec![0u8; 1 << 16];
        while drain.read(&mut sink).await.unwrap() > 0 {}
    });
    let (mut source, mut sink) = (crate::tls::Stream::plain(side), crate::tls::Stream::plain(out));
    let mut pump = Pump::new(Side::Backend, 1 << 20, RelayMode::Dicom);
    let (mut rd, _) = source.split();
    let (_, mut wr) = sink.split();
    let end = pump.pump(&mut rd, &mut wr, &Activity::new(), &counters()).await;
    writer.await.unwrap();

    assert!(matches!(end, PumpEnd::Eof { close_notify: true }), "{end:?}");
    assert_eq!(pump.bytes, total as u64);
    // 200 fragmented + 1 oversized (counted) + 1 after it.
    assert_eq!(pump.operations.values().sum::<u64>(), 202, "{:?}", pump.operations);
    let heap = pump.heap_bytes() + rd.heap_bytes() + wr.heap_bytes();
    assert!(heap <= HEAP_PER_DIRECTION, "{heap} bytes held, bound {HEAP_PER_DIRECTION}");
    assert!(pump.framer.heap_bytes() <= 1024, "the peak command buffer is kept: {}", pump.framer.heap_bytes());
    assert!(rd.heap_bytes() <= stream::RECEIVE_HEAP, "{}", rd.heap_bytes());
    drop((rd, wr));
    drop((source, sink));
    drained.await.unwrap();
}

async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (a, b) = tokio::join!(connect, listener.accept());
    (a.unwrap(), b.unwrap().0)
}
