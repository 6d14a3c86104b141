//! The backend for the raw data-path and idle-connection benchmarks: a plain
//! TCP SCP that answers every A-ASSOCIATE-RQ with an AC, C-ECHO-RQ with a
//! success response, A-RELEASE-RQ with an RP, and discards P-DATA without
//! buffering it (one 256 KiB read buffer per connection).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pdu;

/// The Maximum Length the sink declares (what the proxy may send it).
const SINK_MAX_LENGTH: u32 = 16 << 20;
const READ_SIZE: usize = 256 * 1024;
/// P-DATA bodies up to this size are kept to look for a C-ECHO-RQ.
const SMALL_PDU: usize = 4096;

pub async fn run(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            // EMFILE and friends: back off, never end.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = serve(tcp).await;
        });
    }
}

enum State {
    Header { have: usize, bytes: [u8; 6] },
    Keep { kind: u8, remaining: usize, body: Vec<u8> },
    Skip { remaining: usize },
}

async fn serve(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    // The association request, then the AC.
    let (kind, rq) = pdu::read_pdu(&mut tcp, 1 << 20).await?;
    if kind != pdu::ASSOCIATE_RQ {
        return Ok(());
    }
    let Some(ac) = pdu::associate_ac(&rq, SINK_MAX_LENGTH) else { return Ok(()) };
    tcp.write_all(&ac).await?;
    // A small buffer until data flows: idle connections stay cheap.
    let mut buf = vec![0u8; 512];
    let mut state = State::Header { have: 0, bytes: [0; 6] };
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if n == buf.len() && buf.len() < READ_SIZE {
            buf.resize(READ_SIZE, 0);
        }
        let mut pos = 0;
        while pos < n {
            match &mut state {
                State::Header { have, bytes } => {
                    let take = (6 - *have).min(n - pos);
                    bytes[*have..*have + take].copy_from_slice(&buf[pos..pos + take]);
                    *have += take;
                    pos += take;
                    if *have == 6 {
                        let kind = bytes[0];
                        let len = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
                        state = if kind == pdu::P_DATA && len > SMALL_PDU {
                            State::Skip { remaining: len }
                        } else if len > SMALL_PDU {
                            return Ok(());
                        } else {
                            State::Keep { kind, remaining: len, body: Vec::with_capacity(len) }
                        };
                    }
                }
                State::Skip { remaining } => {
                    let take = (*remaining).min(n - pos);
                    pos += take;
                    *remaining -= take;
                    if *remaining == 0 {
                        state = State::Header { have: 0, bytes: [0; 6] };
                    }
                }
                State::Keep { kind, remaining, body } => {
                    let take = (*remaining).min(n - pos);
                    body.extend_from_slice(&buf[pos..pos + take]);
                    pos += take;
                    *remaining -= take;
                    if *remaining == 0 {
                        match *kind {
                            pdu::P_DATA => {
                                if let Some((context, id)) = pdu::parse_echo_rq(body) {
                                    tcp.write_all(&pdu::echo_rsp(context, id)).await?;
                                }
                            }
                            pdu::RELEASE_RQ => {
                                tcp.write_all(&pdu::RELEASE_RP_PDU).await?;
                            }
                            pdu::ABORT => return Ok(()),
                            _ => {}
                        }
                        state = State::Header { have: 0, bytes: [0; 6] };
                    }
                }
            }
        }
    }
}
