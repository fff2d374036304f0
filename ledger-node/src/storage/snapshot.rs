//! The snapshot file format: the ledger's records up to a tree size and its published
//! checkpoints, as a stream of length-prefixed frames.
//!
//! A snapshot is read and written one frame at a time, so a ledger larger than memory can be
//! built, sent in bounded chunks and installed. It carries no MMR nodes or indexes: the
//! installing node recomputes them from the records and checks the root in the header, so a
//! snapshot that was damaged in transit or on disk cannot be installed.
//!
//! ```text
//! MAGIC, then frames: kind (1 byte) ‖ length (u32 BE) ‖ payload
//!   'H' header (postcard SnapshotHeader), first and once
//!   'L' one record's bytes, for leaves 0..size in order
//!   'C' one published checkpoint (postcard (size, note)), ascending sizes
//!   'E' end, empty: a snapshot without it is truncated
//! ```

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"AEGSNAP1";
/// Largest frame accepted when reading: a record or checkpoint is far smaller; anything larger
/// is a corrupt length, refused before allocating.
pub(crate) const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What a snapshot is of: the Raft position it covers and the tree it must rebuild.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    pub size: u64,
    pub root: [u8; 32],
}

/// One unit of a snapshot stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Leaf(Vec<u8>),
    Checkpoint { size: u64, note: String },
    End,
}

/// Writes a snapshot frame by frame.
pub struct SnapshotWriter<W> {
    out: W,
}

/// Reads a snapshot frame by frame, refusing malformed or oversized frames.
pub struct SnapshotReader<R> {
    input: R,
    ended: bool,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(mut out: W, header: &SnapshotHeader) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        let header = postcard::to_stdvec(header).map_err(io::Error::other)?;
        write_frame(&mut out, b'H', &header)?;
        Ok(Self { out })
    }

    pub fn leaf(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_frame(&mut self.out, b'L', bytes)
    }

    pub fn checkpoint(&mut self, size: u64, note: &str) -> io::Result<()> {
        let payload = postcard::to_stdvec(&(size, note)).map_err(io::Error::other)?;
        write_frame(&mut self.out, b'C', &payload)
    }

    /// Writes the end frame and returns the output, for the caller to flush and sync.
    pub fn finish(mut self) -> io::Result<W> {
        write_frame(&mut self.out, b'E', &[])?;
        Ok(self.out)
    }
}

impl<R: Read> SnapshotReader<R> {
    /// Checks the magic and reads the header.
    pub fn open(mut input: R) -> io::Result<(Self, SnapshotHeader)> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not an Aegis snapshot (bad magic)"));
        }
        let (kind, payload) = read_frame(&mut input)?;
        if kind != b'H' {
            return Err(invalid("snapshot does not start with a header"));
        }
        let header = postcard::from_bytes(&payload).map_err(|_| invalid("malformed snapshot header"))?;
        Ok((Self { input, ended: false }, header))
    }

    /// The next frame; `Frame::End` once, then an error if called again.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        if self.ended {
            return Err(invalid("read past the end of the snapshot"));
        }
        let (kind, payload) = read_frame(&mut self.input)?;
        match kind {
            b'L' => Ok(Frame::Leaf(payload)),
            b'C' => {
                let (size, note) =
                    postcard::from_bytes(&payload).map_err(|_| invalid("malformed checkpoint frame"))?;
                Ok(Frame::Checkpoint { size, note })
            }
            b'E' if payload.is_empty() => {
                self.ended = true;
                Ok(Frame::End)
            }
            _ => Err(invalid("unknown snapshot frame")),
        }
    }
}

fn write_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("snapshot frame over 4 GiB"))?;
    out.write_all(&[kind])?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(payload)
}

fn read_frame(input: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => invalid("snapshot is truncated"),
        _ => error,
    })?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(invalid("snapshot frame length is implausible: the snapshot is corrupt"));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => invalid("snapshot is truncated"),
        _ => error,
    })?;
    Ok((head[0], payload))
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
