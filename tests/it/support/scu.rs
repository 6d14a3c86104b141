//! A test SCU on dicom-ul's async client association, over TLS or plain TCP.
//! (dicom-ul reports any failure to read the association response as
//! `TlsNotSupported`, so tests that care about *what* came back use the raw
//! helpers in `raw` instead.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::dimse::{self, Command};

pub type TlsAssociation = AsyncClientAssociation<tokio_rustls::client::TlsStream<TcpStream>>;
pub type PlainAssociation = AsyncClientAssociation<TcpStream>;

fn options<'a>(calling: &'a str, called: &'a str) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling)
        .called_ae_title(called)
        .with_abstract_syntax(dimse::VERIFICATION)
        .read_timeout(Duration::from_secs(15))
        .write_timeout(Duration::from_secs(5))
        .connection_timeout(Duration::from_secs(5))
}

/// Requests an association over TLS (server name `localhost`).
pub async fn associate_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    calling: &str,
    called: &str,
) -> Result<TlsAssociation, dicom_ul::association::Error> {
    super::init();
    options(calling, called).server_name("localhost").tls_config(tls).establish_tls_async(addr).await
}

/// Requests an association over plain TCP.
pub async fn associate_plain(
    addr: SocketAddr,
    calling: &str,
    called: &str,
) -> Result<PlainAssociation, dicom_ul::association::Error> {
    super::init();
    options(calling, called).establish_async(addr).await
}

/// Sends one C-ECHO-RQ and returns the response status.
pub async fn echo<S>(association: &mut AsyncClientAssociation<S>, message_id: u16) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let pc = association.presentation_contexts().first().ok_or("no presentation context accepted")?.id;
    let rq = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: dimse::echo_rq(message_id),
        }],
    };
    association.send(&rq).await.map_err(|e| format!("send C-ECHO-RQ: {e}"))?;
    match association.receive().await {
        Ok(Pdu::PData { data }) => {
            let pdv = data.first().ok_or("empty P-DATA")?;
            let cmd = Command::parse(&pdv.data).ok_or("unparsable C-ECHO-RSP")?;
            if cmd.command_field() != Some(dimse::C_ECHO_RSP) {
                return Err(format!("not a C-ECHO-RSP: {cmd:?}"));
            }
            if cmd.u16(0x0120) != Some(message_id) {
                return Err(format!("response to another message: {cmd:?}"));
            }
            cmd.status().ok_or_else(|| "no status".to_owned())
        }
        Ok(other) => Err(format!("expected P-DATA, got {other:?}")),
        Err(e) => Err(format!("receive C-ECHO-RSP: {e}")),
    }
}

/// Associates over TLS, C-ECHOes once, releases. `Ok` only if all of it worked
/// and the status was 0000 (Success).
pub async fn echo_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    calling: &str,
    called: &str,
) -> Result<(), String> {
    let mut a = associate_tls(addr, tls, calling, called).await.map_err(|e| format!("associate: {e:?}"))?;
    finish_echo(&mut a).await?;
    a.release().await.map_err(|e| format!("release: {e}"))
}

/// As [`echo_tls`] over plain TCP.
pub async fn echo_plain(addr: SocketAddr, calling: &str, called: &str) -> Result<(), String> {
    let mut a = associate_plain(addr, calling, called).await.map_err(|e| format!("associate: {e:?}"))?;
    finish_echo(&mut a).await?;
    a.release().await.map_err(|e| format!("release: {e}"))
}

async fn finish_echo<S>(a: &mut AsyncClientAssociation<S>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match echo(a, 1).await? {
        0x0000 => Ok(()),
        status => Err(format!("C-ECHO status {status:04X}")),
    }
}
