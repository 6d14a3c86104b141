//! A plain (non-TLS) test SCP built on dicom-ul's async server association:
//! accepts any AE titles and the Verification SOP class, answers C-ECHO,
//! releases on request, and reports every event on a channel so tests can
//! assert what reached the backend (or that nothing did). Also a one-shot
//! fake SCP answering the first PDU with fixed bytes.

use std::net::SocketAddr;
use std::time::Duration;

use dicom_ul::association::Association;
use dicom_ul::pdu::{AbortRQSource, PDataValue, PDataValueType};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::dimse::{self, Command};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScpEvent {
    /// A TCP connection was accepted.
    Connected,
    /// An association was accepted.
    Associated { calling: String, called: String },
    /// A C-ECHO-RQ was answered with status 0.
    Echo,
    /// A-RELEASE-RQ received and answered.
    Released,
    /// A-ABORT received.
    Aborted(AbortRQSource),
    /// The connection ended otherwise (error text).
    Closed(String),
}

/// A running test SCP; dropping it stops the accept loop and every association.
pub struct TestScp {
    pub addr: SocketAddr,
    events: mpsc::UnboundedReceiver<ScpEvent>,
    task: JoinHandle<()>,
}

impl TestScp {
    pub async fn spawn(ae_title: &str) -> TestScp {
        super::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SCP");
        let addr = listener.local_addr().expect("SCP addr");
        let (tx, events) = mpsc::unbounded_channel();
        let ae_title = ae_title.to_owned();
        let task = tokio::spawn(async move {
            let mut associations = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tx.send(ScpEvent::Connected);
                associations.spawn(serve(stream, ae_title.clone(), tx.clone()));
            }
        });
        TestScp { addr, events, task }
    }

    /// The next event, or a panic naming what was awaited.
    pub async fn next_event(&mut self, within: Duration) -> ScpEvent {
        super::within(within, "an event at the test SCP", self.events.recv()).await.expect("SCP event channel closed")
    }

    /// Skips `Connected` and returns the next event.
    pub async fn next_association_event(&mut self, within: Duration) -> ScpEvent {
        loop {
            match self.next_event(within).await {
                ScpEvent::Connected => continue,
                other => return other,
            }
        }
    }

    /// Events already delivered, without waiting.
    pub fn drain(&mut self) -> Vec<ScpEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Asserts that no connection at all has reached this SCP.
    pub fn assert_untouched(&mut self) {
        let events = self.drain();
        assert!(events.is_empty(), "the backend SCP was reached: {events:?}");
    }
}

impl Drop for TestScp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, ae_title: String, tx: mpsc::UnboundedSender<ScpEvent>) {
    let options =
        ServerAssociationOptions::new().accept_any().ae_title(ae_title).with_abstract_syntax(dimse::VERIFICATION);
    let mut association = match options.establish_async(stream).await {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.send(ScpEvent::Closed(format!("association failed: {e}")));
            return;
        }
    };
    let _ = tx.send(ScpEvent::Associated {
        calling: association.peer_ae_title().to_owned(),
        called: association.called_ae_title().to_owned(),
    });
    loop {
        match association.receive().await {
            Ok(Pdu::PData { data }) => {
                let Some(pdv) = data.first() else { continue };
                let Some(cmd) = Command::parse(&pdv.data) else {
                    let _ = tx.send(ScpEvent::Closed("unparsable command".into()));
                    return;
                };
                if cmd.command_field() == Some(dimse::C_ECHO_RQ) {
                    let rsp = Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: pdv.presentation_context_id,
                            value_type: PDataValueType::Command,
                            is_last: true,
                            data: dimse::echo_rsp(cmd.message_id().unwrap_or(0), 0x0000),
                        }],
                    };
                    if let Err(e) = association.send(&rsp).await {
                        let _ = tx.send(ScpEvent::Closed(format!("send failed: {e}")));
                        return;
                    }
                    let _ = tx.send(ScpEvent::Echo);
                }
            }
            Ok(Pdu::ReleaseRQ) => {
                let _ = association.send(&Pdu::ReleaseRP).await;
                let _ = tx.send(ScpEvent::Released);
                return;
            }
            Ok(Pdu::AbortRQ { source }) => {
                let _ = tx.send(ScpEvent::Aborted(source));
                return;
            }
            Ok(other) => {
                let _ = tx.send(ScpEvent::Closed(format!("unexpected PDU {other:?}")));
                return;
            }
            Err(e) => {
                let _ = tx.send(ScpEvent::Closed(format!("receive failed: {e}")));
                return;
            }
        }
    }
}

/// A fake SCP on a thread (for the synchronous `echo` command tests): accepts one connection, reads the A-ASSOCIATE-RQ
/// and answers with `reply` (e.g. an A-ASSOCIATE-RJ), then closes.
pub fn one_shot_scp(reply: Vec<u8>) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut header = [0u8; 6];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let _ = s.write_all(&reply);
        let _ = s.flush();
        // Wait for the client to close first, so our reply is not lost to
        // a reset.
        let _ = s.read(&mut [0u8; 64]);
    });
    addr
}
