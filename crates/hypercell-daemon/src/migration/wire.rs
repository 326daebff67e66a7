//! The migration protocol on the wire: length-prefixed JSON messages and the raw bytes
//! they announce, over one TCP connection, after both peers proved they hold the
//! shared secret.
//!
//! ```text
//! source                                   destination
//!   Hello { nonce }                  ->
//!                                    <-    Challenge { nonce, proof of the secret }
//!   Proof { proof of the secret }    ->
//!   Offer { cell, spec, module }     ->    (the module's bytes follow)
//!                                    <-    Accepted | Refused { reason }
//!   (pause, snapshot)
//!   State { log marks, snapshot }    ->    (the snapshot's bytes follow)
//!                                    <-    Running | Refused { reason }
//!   Commit                           ->
//!                                    <-    Committed
//! ```
//!
//! A proof is HMAC-SHA256 over the other peer's nonce and the prover's role, so that
//! neither a peer without the secret nor a replay of an earlier exchange passes. From
//! the Offer on, everything each way is sealed (AES-256-GCM, [`super::seal`]) under
//! keys derived from the secret and both nonces. Everything a peer sends is bounded
//! and read with a time limit.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hypercell_host::persist::{MemoryImage, PageRun, SavedPages, SnapshotFile, SnapshotFileError};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::seal::{Direction, FRAME, Seal, TAG, key};
use crate::record::CellSpec;

/// The protocol's version, in `Hello`.
pub(crate) const PROTOCOL: u32 = 3;

/// Largest JSON message a peer accepts.
const MAX_MESSAGE: u32 = 1 << 20;
/// Most runs of pages in one [`Message::Pages`], which stays well under
/// [`MAX_MESSAGE`].
pub(crate) const RUNS_PER_MESSAGE: usize = 8192;
/// Largest message before the peer proved it holds the secret.
const MAX_HANDSHAKE_MESSAGE: u32 = 512;

/// Longest a peer waits for the other to send or take a message.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// Longest a source waits for the destination's work: compiling the module it offered,
/// restoring the cell it sent.
pub(crate) const WORK_PATIENCE: Duration = Duration::from_secs(600);
/// Longest a destination waits for each message of a peer not yet authenticated.
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(5);

/// Bytes of a nonce.
const NONCE: usize = 32;

/// The messages of a migration.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// The source opens with its nonce.
    Hello { protocol: u32, nonce: Vec<u8> },
    /// The destination's nonce and its proof of the secret.
    Challenge { nonce: Vec<u8>, proof: Vec<u8> },
    /// The source's proof of the secret.
    Proof { proof: Vec<u8> },
    /// The cell the source offers; `module_len` bytes of its module follow.
    Offer(Box<Offer>),
    /// The destination can take the cell.
    Accepted,
    /// Pages of the running cell's memory, a pre-copy's: their bytes follow, run
    /// after run. Later pages replace earlier ones at the same address.
    Pages { runs: Vec<PageRun> },
    /// The source has sent its pre-copy's pages and waits, before it pauses the cell,
    /// until the destination has written them: pages still on their way would hold up
    /// the pause.
    PagesDone,
    /// The destination has written every page sent before [`Message::PagesDone`].
    PagesWritten,
    /// The destination refuses, in one sentence.
    Refused { reason: String },
    /// The paused cell's state: its snapshot follows, as `SnapshotFile::send_stream`
    /// writes it.
    State,
    /// The destination runs the cell.
    Running,
    /// The source lets the cell go.
    Commit,
    /// The destination keeps the cell.
    Committed,
}

/// What a source tells the destination about the cell it offers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub id: String,
    pub name: String,
    pub spec: CellSpec,
    /// Whether it is paused (and stays paused there).
    pub paused: bool,
    /// Whether its stdin is open to the API (else the program reads its end).
    pub stdin_open: bool,
    /// The port of the source's own migration listener, if it has one.
    pub source_port: Option<u16>,
    /// The Hypercell version, CPU features and compiler fingerprint the cell's code
    /// was compiled for: the destination's must be the same.
    pub hypercell_version: String,
    pub cpu_features: u32,
    pub engine: String,
    /// The module's file name's extension (`wasm` or `wat`), and its length.
    pub module_extension: String,
    pub module_len: u64,
}

/// Why a migration's connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer sent a message of {0} bytes, more than allowed")]
    TooLarge(u32),
    #[error("the peer sent a message that is not part of the protocol: {0}")]
    Malformed(String),
    #[error("the peer does not hold the migration secret")]
    Unauthenticated,
}

/// One end of a migration's connection.
pub(crate) struct Wire {
    stream: TcpStream,
    /// Largest message taken, and how long a whole message may take to arrive.
    limit: u32,
    patience: Duration,
    /// Once both peers proved the secret: what seals what this end sends, and opens
    /// what it receives.
    sealing: Option<Seal>,
    opening: Option<Seal>,
    /// The opened frame being read, and how far.
    opened: Vec<u8>,
    read_at: usize,
    /// Bytes read from the stream and not yet taken: `incoming[taken..]`.
    incoming: Vec<u8>,
    taken: usize,
    /// The stream's read timeout as last set.
    read_timeout: Duration,
    /// Sealed frames on their way out, kept to be filled again.
    outgoing: Vec<u8>,
}

/// Bytes the wire asks the stream for at once; a read at least this long goes
/// straight into the caller's buffer.
const READ_AHEAD: usize = 64 << 10;

/// Where one read from the stream goes.
enum Target<'a, 'b> {
    /// Straight into the caller's buffers, in order.
    Caller(&'a mut [IoSliceMut<'b>]),
    /// Into the wire's read-ahead buffer.
    Incoming,
}

/// How long bytes sent may go unacknowledged, or a quiet connection go unanswered by
/// keepalive probes, before the connection is taken for dead: a cut link must not hold
/// a paused cell for the minutes a peer's work may take.
const DEAD_PEER: Duration = Duration::from_secs(10);

/// Makes the kernel end `stream` once its peer has not answered for [`DEAD_PEER`],
/// whether this end is sending (`TCP_USER_TIMEOUT`) or waiting (keepalive probes).
fn notice_dead_peers(stream: &TcpStream) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt reads one int at the pointer, for an option of the socket
        // `stream` owns.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let quiet = (DEAD_PEER.as_secs() / 5) as libc::c_int;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, quiet)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, quiet)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        DEAD_PEER.as_millis() as libc::c_int,
    )
}

impl Wire {
    pub fn new(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        notice_dead_peers(&stream)?;
        Ok(Self {
            stream,
            limit: MAX_MESSAGE,
            patience: PATIENCE,
            sealing: None,
            opening: None,
            opened: Vec::new(),
            read_at: 0,
            incoming: Vec::new(),
            taken: 0,
            read_timeout: PATIENCE,
            outgoing: Vec::new(),
        })
    }

    /// Seals everything from now on, with `sending` for what this end sends and
    /// `receiving` for what it receives.
    fn seal(&mut self, sending: [u8; 32], receiving: [u8; 32]) {
        self.sealing = Some(Seal::new(sending));
        self.opening = Some(Seal::new(receiving));
    }

    /// Sends `bytes`, sealed in frames once the handshake is done.
    fn write_out(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(sealing) = &mut self.sealing else {
            return self.stream.write_all(bytes);
        };
        let mut frames = std::mem::take(&mut self.outgoing);
        frames.clear();
        frames.reserve(bytes.len() + bytes.len().div_ceil(FRAME) * (4 + TAG));
        for chunk in bytes.chunks(FRAME) {
            sealing.seal(chunk, &mut frames)?;
        }
        let sent = self.stream.write_all(&frames);
        self.outgoing = frames;
        sent
    }

    /// Sends `bytes` sealed, as [`Self::write_out`] would, but sealing them where they
    /// lie, which leaves them ciphertext: no copy of a large buffer is made.
    fn write_out_in_place(&mut self, bytes: &mut [u8]) -> std::io::Result<()> {
        let Some(sealing) = &mut self.sealing else {
            return self.stream.write_all(bytes);
        };
        let chunks: Vec<&mut [u8]> = bytes.chunks_mut(FRAME).collect();
        let mut heads = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let (length, tag) = sealing.seal_in_place(chunk)?;
            heads.push((length, tag, &*chunk));
        }
        // The kernel takes at most 1024 pieces a call: a frame is three.
        for group in heads.chunks(256) {
            let mut slices: Vec<IoSlice<'_>> = group
                .iter()
                .flat_map(|(length, tag, body)| {
                    [IoSlice::new(length), IoSlice::new(body), IoSlice::new(tag)]
                })
                .collect();
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                match self.stream.write_vectored(slices) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(written) => IoSlice::advance_slices(&mut slices, written),
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Fills `buffer` before `deadline` with what the peer sent, opening its frames once
    /// the handshake is done.
    fn read_in(&mut self, buffer: &mut [u8], deadline: Instant) -> std::io::Result<()> {
        if self.opening.is_none() {
            return self.read_by(buffer, deadline);
        }
        let mut filled = 0;
        while filled < buffer.len() {
            filled += self.read_some(&mut buffer[filled..], deadline)?;
        }
        Ok(())
    }

    /// Reads what the peer sent, at least one byte, into `buffer`: from the frame being
    /// read, or from the next frame, which must arrive before `deadline`.
    fn read_some(&mut self, buffer: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
        if self.read_at == self.opened.len() {
            self.open_next(deadline)?;
        }
        let n = buffer.len().min(self.opened.len() - self.read_at);
        buffer[..n].copy_from_slice(&self.opened[self.read_at..self.read_at + n]);
        self.read_at += n;
        Ok(n)
    }

    /// Reads the next sealed frame, which must arrive before `deadline`, and opens it
    /// as the frame being read.
    fn open_next(&mut self, deadline: Instant) -> std::io::Result<()> {
        let mut len = [0; 4];
        self.read_by(&mut len, deadline)?;
        self.open_frame(frame_len(len)?, deadline)
    }

    /// Reads the rest of a sealed frame of `len` bytes, whose length was read, and
    /// opens it as the frame being read.
    fn open_frame(&mut self, len: usize, deadline: Instant) -> std::io::Result<()> {
        let mut frame = std::mem::take(&mut self.opened);
        frame.resize(len, 0);
        self.read_by(&mut frame, deadline)?;
        self.opening
            .as_mut()
            .expect("frames are read once sealed")
            .open(&mut frame)?;
        self.opened = frame;
        self.read_at = 0;
        Ok(())
    }

    /// Fills `buffer` before `deadline`, however slowly the peer sends.
    fn read_by(&mut self, buffer: &mut [u8], deadline: Instant) -> std::io::Result<()> {
        let mut filled = 0;
        while filled < buffer.len() {
            let ahead = self.incoming.len() - self.taken;
            if ahead > 0 {
                let n = ahead.min(buffer.len() - filled);
                buffer[filled..filled + n]
                    .copy_from_slice(&self.incoming[self.taken..self.taken + n]);
                self.taken += n;
                filled += n;
                continue;
            }
            let want = buffer.len() - filled;
            if want >= READ_AHEAD {
                let mut slices = [IoSliceMut::new(&mut buffer[filled..])];
                filled += self.read_stream(Target::Caller(&mut slices), deadline)?;
            } else {
                self.read_stream(Target::Incoming, deadline)?;
            }
        }
        Ok(())
    }

    /// Fills each of `parts` in turn before `deadline`: from the read-ahead buffer
    /// first, then straight from the stream, reading no further than their end.
    fn read_parts(&mut self, parts: &mut [&mut [u8]], deadline: Instant) -> std::io::Result<()> {
        let (mut part, mut at) = (0, 0);
        while part < parts.len() {
            let ahead = self.incoming.len() - self.taken;
            let read = if ahead > 0 {
                let n = ahead.min(parts[part].len() - at);
                parts[part][at..at + n].copy_from_slice(&self.incoming[self.taken..self.taken + n]);
                self.taken += n;
                n
            } else {
                let (first, rest) = parts[part..].split_first_mut().expect("a part is left");
                let mut slices: Vec<IoSliceMut<'_>> = std::iter::once(&mut first[at..])
                    .chain(rest.iter_mut().map(|rest| &mut rest[..]))
                    .map(IoSliceMut::new)
                    .collect();
                self.read_stream(Target::Caller(&mut slices), deadline)?
            };
            at += read;
            while part < parts.len() && at >= parts[part].len() {
                at -= parts[part].len();
                part += 1;
            }
        }
        Ok(())
    }

    /// One read from the stream, of at least a byte, into `target` (the read-ahead
    /// buffer then holds just what came), before `deadline`. The stream's timeout is
    /// set only when the deadline is nearer than it; a read that times out before the
    /// deadline is tried again.
    fn read_stream(
        &mut self,
        mut target: Target<'_, '_>,
        deadline: Instant,
    ) -> std::io::Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            if left < self.read_timeout {
                self.stream.set_read_timeout(Some(left))?;
                self.read_timeout = left;
            }
            let read = match &mut target {
                Target::Caller(buffers) => self.stream.read_vectored(buffers),
                Target::Incoming => {
                    self.incoming.resize(READ_AHEAD, 0);
                    let read = self.stream.read(&mut self.incoming);
                    self.incoming.truncate(*read.as_ref().unwrap_or(&0));
                    self.taken = 0;
                    read
                }
            };
            match read {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => return Ok(read),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Waited out the timeout set for an earlier, nearer deadline.
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        self.read_timeout = left.min(PATIENCE);
                        self.stream.set_read_timeout(Some(self.read_timeout))?;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn send(&mut self, message: &Message) -> Result<(), WireError> {
        let json = serde_json::to_vec(message).map_err(|e| WireError::Malformed(e.to_string()))?;
        let len = u32::try_from(json.len()).map_err(|_| WireError::TooLarge(u32::MAX))?;
        let mut framed = Vec::with_capacity(4 + json.len());
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(&json);
        self.write_out(&framed)?;
        Ok(())
    }

    pub fn receive(&mut self) -> Result<Message, WireError> {
        self.receive_within(self.patience)
    }

    /// [`Self::receive`], for an answer that may take `patience` of work to come (a
    /// module compiled, a large cell restored).
    pub fn receive_within(&mut self, patience: Duration) -> Result<Message, WireError> {
        let deadline = Instant::now() + patience;
        let mut len = [0; 4];
        self.read_in(&mut len, deadline)?;
        let len = u32::from_le_bytes(len);
        if len > self.limit {
            return Err(WireError::TooLarge(len));
        }
        let mut json = vec![0; len as usize];
        self.read_in(&mut json, deadline)?;
        parse(&json)
    }

    /// Sends `bytes`, which a message announced.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        Ok(self.write_out(bytes)?)
    }

    /// Receives exactly `len` bytes into `to`, handed over as each sealed frame opens.
    pub fn receive_bytes(&mut self, to: &mut impl Write, len: u64) -> Result<(), WireError> {
        let mut left = len;
        while left > 0 {
            if self.opening.is_none() {
                let mut chunk = vec![0; FRAME.min(usize::try_from(left).unwrap_or(FRAME))];
                self.read_by(&mut chunk, Instant::now() + PATIENCE)?;
                to.write_all(&chunk)?;
                left -= chunk.len() as u64;
                continue;
            }
            if self.read_at == self.opened.len() {
                self.open_next(Instant::now() + PATIENCE)?;
            }
            let n =
                (self.opened.len() - self.read_at).min(usize::try_from(left).unwrap_or(usize::MAX));
            to.write_all(&self.opened[self.read_at..self.read_at + n])?;
            self.read_at += n;
            left -= n as u64;
        }
        Ok(())
    }

    /// Receives exactly `target.len()` bytes into `target`. A sealed frame that falls
    /// wholly inside it is read there and opened in place: bulk bytes (a cell's pages)
    /// go from the socket to where they belong with no copy between.
    pub fn receive_into(&mut self, target: &mut [u8]) -> Result<(), WireError> {
        if self.opening.is_none() {
            self.read_by(target, Instant::now() + PATIENCE)?;
            return Ok(());
        }
        let mut filled = 0;
        // The length of the next frame, when it was read with the last one.
        let mut next = None;
        while filled < target.len() {
            let deadline = Instant::now() + PATIENCE;
            if self.read_at < self.opened.len() {
                filled += self.read_some(&mut target[filled..], deadline)?;
                continue;
            }
            let len = match next.take() {
                Some(len) => len,
                None => {
                    let mut len = [0; 4];
                    self.read_by(&mut len, deadline)?;
                    frame_len(len)?
                }
            };
            let plain = len - TAG;
            if plain > target.len() - filled {
                // It holds bytes past the target's: opened apart, and copied.
                self.open_frame(len, deadline)?;
                continue;
            }
            // The next frame's length comes with this one when another must follow.
            let more = filled + plain < target.len();
            let body = &mut target[filled..filled + plain];
            let mut tag = [0; TAG];
            let mut after = [0; 4];
            if more {
                self.read_parts(&mut [&mut *body, &mut tag, &mut after], deadline)?;
            } else {
                self.read_parts(&mut [&mut *body, &mut tag], deadline)?;
            }
            self.opening
                .as_mut()
                .expect("frames are read once sealed")
                .open_apart(body, tag)?;
            filled += plain;
            if more {
                next = Some(frame_len(after)?);
            }
        }
        Ok(())
    }

    /// Sends the pages of `image` (held in memory) as [`Message::Pages`]; the bytes
    /// sent. The pages are sealed where they lie: the image holds ciphertext after.
    pub fn send_pages(&mut self, image: &mut MemoryImage) -> Result<u64, WireError> {
        let SavedPages::InMemory(bytes) = &mut image.pages else {
            return Err(WireError::Malformed(
                "pages to send are not in memory".into(),
            ));
        };
        let mut at = 0usize;
        for runs in image.runs.chunks(RUNS_PER_MESSAGE) {
            let len: u64 = runs.iter().map(|run| run.len).sum();
            self.send(&Message::Pages {
                runs: runs.to_vec(),
            })?;
            let end = at + len as usize;
            let chunk = bytes
                .get_mut(at..end)
                .ok_or_else(|| WireError::Malformed("pages to send are missing".into()))?;
            self.write_out_in_place(chunk)?;
            at = end;
        }
        Ok(at as u64)
    }

    /// Sends `snapshot` as a stream; the bytes sent.
    pub fn send_snapshot(&mut self, snapshot: &SnapshotFile) -> std::io::Result<u64> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, Sealed(self));
        let sent = snapshot.send_stream(&mut out)?;
        out.flush()?;
        Ok(sent)
    }

    /// Receives a snapshot [`Self::send_snapshot`] sent as the file `path`, naming
    /// `module` as its module.
    pub fn receive_snapshot(
        &mut self,
        path: &std::path::Path,
        module: &std::path::Path,
    ) -> Result<SnapshotFile, SnapshotFileError> {
        SnapshotFile::receive_stream(&mut Sealed(self), path, module)
    }

    /// Proves the source's knowledge of `secret` and checks the destination's.
    pub fn authenticate_as_source(&mut self, secret: &[u8]) -> Result<(), WireError> {
        let nonce = nonce()?;
        self.send(&Message::Hello {
            protocol: PROTOCOL,
            nonce: nonce.clone(),
        })?;
        let Message::Challenge {
            nonce: theirs,
            proof,
        } = self.receive()?
        else {
            return Err(WireError::Unauthenticated);
        };
        if theirs.len() != NONCE {
            return Err(WireError::Unauthenticated);
        }
        if !verify(secret, Role::Destination, &nonce, &proof) {
            return Err(WireError::Unauthenticated);
        }
        self.send(&Message::Proof {
            proof: prove(secret, Role::Source, &theirs),
        })?;
        self.seal(
            key(secret, Direction::ToDestination, &nonce, &theirs),
            key(secret, Direction::ToSource, &nonce, &theirs),
        );
        Ok(())
    }

    /// Checks the source's knowledge of `secret` and proves the destination's. Until
    /// it has, the peer's messages must be short and quick.
    pub fn authenticate_as_destination(&mut self, secret: &[u8]) -> Result<(), WireError> {
        self.limit = MAX_HANDSHAKE_MESSAGE;
        self.patience = HANDSHAKE_PATIENCE;
        self.handshake_as_destination(secret)?;
        self.limit = MAX_MESSAGE;
        self.patience = PATIENCE;
        Ok(())
    }

    fn handshake_as_destination(&mut self, secret: &[u8]) -> Result<(), WireError> {
        let Message::Hello {
            protocol,
            nonce: theirs,
        } = self.receive()?
        else {
            return Err(WireError::Malformed("it did not open with Hello".into()));
        };
        if theirs.len() != NONCE {
            return Err(WireError::Malformed("its nonce is not 32 bytes".into()));
        }
        if protocol != PROTOCOL {
            return Err(WireError::Malformed(format!(
                "it speaks migration protocol {protocol}, this daemon {PROTOCOL}"
            )));
        }
        let nonce = nonce()?;
        self.send(&Message::Challenge {
            nonce: nonce.clone(),
            proof: prove(secret, Role::Destination, &theirs),
        })?;
        match self.receive()? {
            Message::Proof { proof } if verify(secret, Role::Source, &nonce, &proof) => {
                self.seal(
                    key(secret, Direction::ToSource, &theirs, &nonce),
                    key(secret, Direction::ToDestination, &theirs, &nonce),
                );
                Ok(())
            }
            _ => Err(WireError::Unauthenticated),
        }
    }
}

/// A wire as a byte stream each way, sealed: what snapshots are sent and received
/// through.
struct Sealed<'a>(&'a mut Wire);

impl Write for Sealed<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write_out(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Sealed<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        self.0.read_some(buffer, Instant::now() + PATIENCE)
    }
}

/// The length a sealed frame's first four bytes give, if a frame may be that long.
fn frame_len(len: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_le_bytes(len) as usize;
    if !(TAG..=FRAME + TAG).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the peer sent a frame of {len} bytes"),
        ));
    }
    Ok(len)
}

fn parse(json: &[u8]) -> Result<Message, WireError> {
    serde_json::from_slice(json).map_err(|e| WireError::Malformed(e.to_string()))
}

#[derive(Clone, Copy)]
enum Role {
    Source,
    Destination,
}

fn nonce() -> Result<Vec<u8>, WireError> {
    let mut nonce = vec![0; NONCE];
    getrandom::fill(&mut nonce).map_err(|e| WireError::Io(std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

fn mac(secret: &[u8], role: Role, nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(match role {
        Role::Source => b"hypercell migration source",
        Role::Destination => b"hypercell migration destination",
    });
    mac.update(nonce);
    mac
}

fn prove(secret: &[u8], role: Role, nonce: &[u8]) -> Vec<u8> {
    mac(secret, role, nonce).finalize().into_bytes().to_vec()
}

fn verify(secret: &[u8], role: Role, nonce: &[u8], proof: &[u8]) -> bool {
    // Constant time, so that the comparison leaks nothing of the right proof.
    mac(secret, role, nonce).verify_slice(proof).is_ok()
}

/// Two wires joined over loopback: a source's end, then a destination's.
#[cfg(test)]
pub(crate) fn pair() -> (Wire, Wire) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (Wire::new(client).unwrap(), Wire::new(server).unwrap())
}

/// [`pair`], once both ends proved the secret: what goes between them is sealed.
#[cfg(test)]
pub(crate) fn authenticated() -> (Wire, Wire) {
    let (mut source, mut destination) = pair();
    let checked = std::thread::spawn(move || {
        destination.authenticate_as_destination(b"secret").unwrap();
        destination
    });
    source.authenticate_as_source(b"secret").unwrap();
    (source, checked.join().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_with_the_secret_pass_and_others_do_not() {
        for (theirs, passes) in [(&b"secret"[..], true), (&b"guess"[..], false)] {
            let (mut source, mut destination) = pair();
            let checked =
                std::thread::spawn(move || destination.authenticate_as_destination(theirs));
            let ours = source.authenticate_as_source(b"secret");
            // The destination proves itself first: a source refuses a wrong one.
            assert_eq!(ours.is_ok(), passes, "{ours:?}");
            if passes {
                assert!(checked.join().unwrap().is_ok());
            }
        }
    }

    #[test]
    fn after_the_handshake_messages_and_bytes_go_sealed_both_ways() {
        let (mut source, mut destination) = authenticated();
        let big: Vec<u8> = (0..3 * FRAME + 17).map(|i| (i * 7) as u8).collect();
        let sent = big.clone();
        let sending = std::thread::spawn(move || {
            source.send(&Message::State).unwrap();
            source.send_bytes(&sent).unwrap();
            source
        });
        assert!(matches!(destination.receive(), Ok(Message::State)));
        let mut received = Vec::new();
        destination
            .receive_bytes(&mut received, big.len() as u64)
            .unwrap();
        assert_eq!(received, big);
        let mut source = sending.join().unwrap();
        destination.send(&Message::Running).unwrap();
        assert!(matches!(source.receive(), Ok(Message::Running)));
    }

    #[test]
    fn pages_sealed_where_they_lie_arrive_as_they_were() {
        let (mut source, mut destination) = authenticated();
        let runs = vec![
            PageRun {
                addr: 0x1000,
                len: 0x3000,
            },
            PageRun {
                addr: 0x9000,
                len: 0x20000,
            },
        ];
        let pages: Vec<u8> = (0..0x23000usize)
            .map(|i| (i * 13 + i / 4096) as u8)
            .collect();
        let mut image = MemoryImage {
            size: 1 << 20,
            module: 0..0,
            runs: runs.clone(),
            pages: SavedPages::InMemory(pages.clone()),
        };
        let sending = std::thread::spawn(move || {
            let sent = source.send_pages(&mut image).unwrap();
            source.send(&Message::PagesDone).unwrap();
            (sent, image)
        });
        let Ok(Message::Pages { runs: came }) = destination.receive() else {
            panic!("pages were announced");
        };
        assert_eq!(came, runs);
        // In pieces that split frames (of 64 KiB) and hold several: a frame that
        // fits is opened where it lands, one that does not is copied.
        let mut received = vec![0; pages.len()];
        let (first, rest) = received.split_at_mut(0x3000);
        let (second, third) = rest.split_at_mut(0x7000);
        for piece in [first, second, third] {
            destination.receive_into(piece).unwrap();
        }
        assert_eq!(received, pages);
        assert!(matches!(destination.receive(), Ok(Message::PagesDone)));
        let (sent, image) = sending.join().unwrap();
        assert_eq!(sent, pages.len() as u64);
        let SavedPages::InMemory(left) = image.pages else {
            panic!("in memory");
        };
        assert_ne!(left, pages, "sealed where they lay");
    }

    #[test]
    fn a_byte_changed_on_the_way_ends_the_migration() {
        let (mut source, mut destination) = authenticated();
        // What the source's next message looks like on the wire, one bit flipped.
        let mut frames = Vec::new();
        let mut sealing = source.sealing.take().unwrap();
        sealing.seal(b"\x06\0\0\0\"type\"", &mut frames).unwrap();
        frames[9] ^= 1;
        source.stream.write_all(&frames).unwrap();
        match destination.receive() {
            Err(WireError::Io(error)) => {
                assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_proof_for_another_nonce_or_role_fails() {
        let proof = prove(b"s", Role::Source, b"nonce");
        assert!(verify(b"s", Role::Source, b"nonce", &proof));
        assert!(!verify(b"s", Role::Source, b"other", &proof));
        assert!(!verify(b"s", Role::Destination, b"nonce", &proof));
    }

    #[test]
    fn oversized_and_malformed_messages_are_refused() {
        let (mut ours, mut theirs) = pair();
        ours.stream
            .write_all(&(MAX_MESSAGE + 1).to_le_bytes())
            .unwrap();
        assert!(matches!(theirs.receive(), Err(WireError::TooLarge(_))));
        let (mut ours, mut theirs) = pair();
        ours.stream.write_all(&5u32.to_le_bytes()).unwrap();
        ours.stream.write_all(b"{\"x\"").unwrap();
        ours.stream.write_all(b"}").unwrap();
        assert!(matches!(theirs.receive(), Err(WireError::Malformed(_))));
    }
}
