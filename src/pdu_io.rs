//! The one bounded reader of whole control PDUs from a stream, used for the
//! client's first PDU (`connection::first_pdu`), the SCP's answer to a
//! forwarded A-ASSOCIATE-RQ (`connection::association`) and every PDU of
//! `dicomgate echo` (`echo::association`).
//!
//! The 6-byte header is read and judged before a body byte is buffered: the
//! first byte as soon as it arrives (garbage is closed at once), then the
//! caller's check of the whole header (PDU type, length against its limit).
//! Then exactly the declared length is read. Everything runs under the
//! caller's one deadline. dicom-ul's wire reader is not used: it is unbounded
//! without `strict` and has no deadline. Relayed P-DATA never comes here (the
//! relay frames it without buffering, `relay::framer`).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use crate::dicom::pdu::{PduHeader, PduType, HEADER_LEN};

/// Why no whole PDU was read. `E` is the caller's own refusal of the header.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The caller's check refused the header (wrong PDU type, too long, …).
    Refused(E),
    /// The first byte is no PDU type: not DICOM.
    NotDicom(u8),
    /// The peer closed after `got` bytes (0: before sending anything).
    Closed {
        got: usize,
    },
    /// The deadline passed after `got` bytes; `header_seen`: the whole
    /// 6-byte header had arrived (the peer speaks DICOM).
    Timeout {
        got: usize,
        header_seen: bool,
    },
    Io(io::Error),
}

/// Reads one whole PDU (header included). `check` sees the header before any
/// body byte is read; it bounds the length.
pub async fn read_pdu<S, E>(
    stream: &mut S,
    deadline: Instant,
    check: impl FnOnce(&PduHeader) -> Result<(), E>,
) -> Result<(PduHeader, Vec<u8>), ReadError<E>>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = read_some(stream, &mut head[got..], deadline, got, false).await?;
        // Judge the first byte as soon as it arrives.
        if got == 0 && PduType::from_byte(head[0]).is_none() {
            return Err(ReadError::NotDicom(head[0]));
        }
        got += n;
    }
    let header = PduHeader::parse(&head);
    check(&header).map_err(ReadError::Refused)?;
    // Bounded by `check`.
    let total = HEADER_LEN + header.length as usize;
    let mut pdu = vec![0u8; total];
    pdu[..HEADER_LEN].copy_from_slice(&head);
    while got < total {
        got += read_some(stream, &mut pdu[got..], deadline, got, true).await?;
    }
    Ok((header, pdu))
}

/// One read of at least one byte, or why not.
async fn read_some<S: AsyncRead + Unpin + ?Sized, E>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
    got: usize,
    header_seen: bool,
) -> Result<usize, ReadError<E>> {
    match timeout_at(deadline, stream.read(buf)).await {
        Err(_) => Err(ReadError::Timeout { got, header_seen }),
        // A TLS peer that closes without close_notify.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Closed { got }),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(0)) => Err(ReadError::Closed { got }),
        Ok(Ok(n)) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn any(_: &PduHeader) -> Result<(), ()> {
        Ok(())
    }

    #[tokio::test]
    async fn reads_a_whole_pdu_in_pieces() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in [&[0x05u8, 0x00][..], &[0, 0, 0], &[4, 0, 0], &[0, 0]] {
                a.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (header, pdu) = read_pdu(&mut b, deadline(), any).await.unwrap();
        assert_eq!((header.pdu_type(), header.length), (Some(PduType::ReleaseRq), 4));
        assert_eq!(pdu, [5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_is_judged_on_its_first_byte() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"G").await.unwrap();
        assert!(matches!(read_pdu(&mut b, deadline(), any).await, Err(ReadError::NotDicom(b'G'))));
    }

    #[tokio::test]
    async fn the_check_runs_before_the_body_is_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
        let too_long = |h: &PduHeader| if h.length > 1024 { Err(h.length) } else { Ok(()) };
        assert!(matches!(read_pdu(&mut b, deadline(), too_long).await, Err(ReadError::Refused(0xFFFF_FFFF))));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_closes_say_how_far_the_peer_got() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0x01, 0, 0, 0, 0, 10, 1]).await.unwrap();
        let at = Instant::now() + Duration::from_secs(1);
        assert!(matches!(read_pdu(&mut b, at, any).await, Err(ReadError::Timeout { got: 7, header_seen: true })));
        drop(a);
        let (_, mut c) = tokio::io::duplex(64);
        assert!(matches!(read_pdu(&mut c, deadline(), any).await, Err(ReadError::Closed { got: 0 })));
    }
}
