//! Metadata stripping for the outputs too large to read whole: FLAC, MP3, MP4 (also MOV and
//! M4A), Ogg (Opus, Vorbis) and WebM/Matroska. ComfyUI's savers write the prompt and workflow
//! into each container's own tags (`SaveAudio`: Vorbis comments; `SaveAudioMP3`: ID3v2 `TXXX`
//! frames; `SaveAudioOpus`: `OpusTags` comments; `SaveVideo`: an `mdta` `meta`/`keys`/`ilst`
//! box under `moov/udta`; `SaveWEBM`: Matroska `Tags`), and `OUTPUT_METADATA=strip` removes
//! them. One file per container.
//!
//! Every stripper works **in place and keeps the file's size**: the metadata is overwritten with
//! the container's own kind of filler (a FLAC `PADDING` block, ID3v2 padding, an MP4 `free` box,
//! zeros after an Ogg comment list, an EBML `Void` element),
//! so no audio frame or sample moves, MP4 chunk offsets (`stco`/`co64`) stay right without
//! rewriting them, and a video of hundreds of MB costs a few reads and writes of its headers,
//! never a copy. The staged file is synced afterwards. Memory is bounded by the one metadata
//! structure read whole (a FLAC comment block: at most 16 MiB by the format; an Ogg comment
//! packet, refused above 64 MiB; a Matroska `SeekHead`, refused above 1 MiB) and a 64 KiB
//! buffer.
//!
//! A file whose structure is broken where its metadata should be is an error
//! ([`StripError::Malformed`]), never a panic and never a half-stripped success.

mod flac;
mod mp3;
mod mp4;
mod ogg;
mod webm;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::media::{self, MediaType};

/// Why a file could not be stripped.
#[derive(Debug)]
pub enum StripError {
    /// Reading or writing the staged file failed.
    Io(io::Error),
    /// The container is broken where its metadata is.
    Malformed {
        /// `FLAC`, `MP3`, `MP4`, `Ogg` or `WebM`.
        format: &'static str,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
}

impl fmt::Display for StripError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripError::Io(e) => write!(f, "rewriting its metadata on local disk: {e}"),
            StripError::Malformed {
                format,
                offset,
                reason,
            } => write!(f, "malformed {format}: at byte {offset}, {reason}"),
        }
    }
}

impl std::error::Error for StripError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StripError::Io(e) => Some(e),
            StripError::Malformed { .. } => None,
        }
    }
}

impl From<io::Error> for StripError {
    fn from(e: io::Error) -> StripError {
        StripError::Io(e)
    }
}

/// Overwrites the metadata of the file at `path` (of type `media`) in place, keeping its size,
/// and syncs it; returns how many bytes were blanked (0: there was nothing to remove, the file
/// is untouched). A type without a stripper here is left alone.
pub fn strip_in_place(path: &Path, media: MediaType) -> Result<u64, StripError> {
    let strip: fn(&mut File) -> Result<u64, StripError> = match media {
        media::FLAC => flac::strip,
        media::MP3 => mp3::strip,
        media::MP4 | media::MOV | media::M4A => mp4::strip,
        media::OPUS | media::OGG => ogg::strip,
        media::WEBM | media::MKV => webm::strip,
        _ => return Ok(0),
    };
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let blanked = strip(&mut file)?;
    if blanked > 0 {
        file.sync_all()?;
    }
    Ok(blanked)
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Writes `bytes` at `offset`.
fn write_at(file: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// Overwrites `len` bytes at `offset` with zeros, 64 KiB at a time.
fn zero_at(file: &mut File, offset: u64, len: u64) -> io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    let zeros = [0u8; BLOCK];
    file.seek(SeekFrom::Start(offset))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Whether the `len` bytes at `offset` are all zero (read 64 KiB at a time).
fn all_zero(file: &mut File, offset: u64, len: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    file.seek(SeekFrom::Start(offset))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Scratch files for the strippers' tests.
    use std::path::PathBuf;

    /// A file holding `bytes` in a fresh temporary folder; removed on drop.
    pub(crate) struct Scratch {
        pub path: PathBuf,
    }

    impl Scratch {
        pub(crate) fn new(name: &str, bytes: &[u8]) -> Scratch {
            let dir = std::env::temp_dir().join(format!("strip-test-{}", crate::ids::new_uuid()));
            std::fs::create_dir_all(&dir).expect("a temp dir");
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("a scratch file");
            Scratch { path }
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.path).expect("the scratch file")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Whether `needle` occurs in `haystack`.
    pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
