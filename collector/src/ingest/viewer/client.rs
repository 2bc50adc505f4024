//! The client side: a viewer's blocking connection to a server (the UI
//! runs it on a thread of its own).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use awaitscope_wire::limits;

use super::protocol::{
    decode_message, greeting, Message, MessageError, STATUS_ACCEPTED, STATUS_REFUSED, VIEWER_MAGIC,
    VIEWER_VERSION,
};

/// Why a viewer could not connect or lost its connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The server refused the viewer.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer is not an awaitscope serve (or a different version).
    #[error("not an awaitscope serve: {0}")]
    NotServe(String),
    /// The server closed the connection.
    #[error("connection closed by serve")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The server sent something undecodable.
    #[error("bad data from serve: {0}")]
    Decode(MessageError),
}

/// A viewer's connection to a server.
pub struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    offset: u64,
}

impl Client {
    /// Resolves `addr` (`host:port`), connects within `timeout`, greets
    /// with `token` and reads the reply.
    pub fn connect(
        addr: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|_| ClientError::Resolve(addr.to_string()))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => return Client::handshake(s, token, timeout),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ClientError::Connect(e),
            None => ClientError::Resolve(addr.to_string()),
        })
    }

    /// Greets over an open `stream` and reads the reply (within `timeout`).
    pub fn handshake(
        mut stream: TcpStream,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let peer = stream.peer_addr().map_err(ClientError::Io)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        stream
            .write_all(&greeting(token))
            .map_err(ClientError::Io)?;
        let mut head = [0u8; 11];
        read_exact(&mut stream, &mut head)?;
        if head[..8] != VIEWER_MAGIC {
            return Err(ClientError::NotServe(
                "bad reply (is this an awaitscope serve, and of this version?)".into(),
            ));
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != VIEWER_VERSION {
            return Err(ClientError::NotServe(format!(
                "viewer protocol version {version} (this UI speaks version {VIEWER_VERSION})"
            )));
        }
        match head[10] {
            STATUS_ACCEPTED => {}
            STATUS_REFUSED => {
                let mut len = [0u8; 2];
                read_exact(&mut stream, &mut len)?;
                let len = (u16::from_le_bytes(len) as usize).min(limits::MAX_STR_LEN);
                let mut reason = vec![0u8; len];
                read_exact(&mut stream, &mut reason)?;
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                ));
            }
            s => return Err(ClientError::NotServe(format!("unknown reply status {s}"))),
        }
        Ok(Client {
            stream,
            peer,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0; 64 * 1024],
            offset: 0,
        })
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Reads what arrives within `wait` (at least one read) and appends the
    /// whole messages to `out`.
    pub fn read(&mut self, out: &mut Vec<Message>, wait: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(ClientError::Io)?;
            match self.stream.read(&mut self.chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
            let before = out.len();
            let mut pos = 0;
            while let Some((m, used)) =
                decode_message(&self.buf[pos..], self.offset).map_err(ClientError::Decode)?
            {
                pos += used;
                self.offset += used as u64;
                out.push(m);
            }
            self.buf.drain(..pos);
            if out.len() > before || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), ClientError> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ClientError::NotServe(
            "the connection closed during the handshake (an older serve, or not awaitscope?)"
                .into(),
        ),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::NotServe("no reply to the greeting in time".into())
        }
        _ => ClientError::Io(e),
    })
}
