//! The standard streams: the host's input, output and error, as streams (no offset, no
//! position).

use super::object::{Cx, Kind, Readiness};
use super::*;

/// One of the standard streams.
pub(super) enum Stream {
    Input,
    Output,
    Error,
}

impl Stream {
    /// What the stream is to the guest: a character device when the host's stream is a
    /// terminal, else a stream of unknown kind. A deterministic run never sees a terminal, so
    /// that it prints the same bytes wherever it runs.
    fn filetype_of(&self, cx: &mut Cx<'_>) -> FileType {
        let stream = match self {
            Stream::Input => 0,
            Stream::Output => 1,
            Stream::Error => 2,
        };
        if !cx.deterministic() && cx.host.stdio_is_terminal(stream) {
            FileType::CharacterDevice
        } else {
            FileType::Unknown
        }
    }
}

impl Kind for Stream {
    fn read(&mut self, cx: &mut Cx<'_>, buf: &mut [u8], at: Option<u64>) -> Result<usize, Errno> {
        match (self, at) {
            (Stream::Input, Some(_)) => Err(Errno::Spipe),
            (Stream::Input, None) => cx.host.stdin_read(buf),
            _ => Err(Errno::Badf),
        }
    }

    fn write(
        &mut self,
        cx: &mut Cx<'_>,
        data: &[u8],
        at: Option<u64>,
        _append: bool,
    ) -> Result<usize, Errno> {
        match (self, at) {
            (Stream::Input, _) => return Err(Errno::Badf),
            (_, Some(_)) => return Err(Errno::Spipe),
            (Stream::Output, None) => cx.host.stdout_write(data)?,
            (Stream::Error, None) => cx.host.stderr_write(data)?,
        }
        Ok(data.len())
    }

    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno> {
        Ok(Stat {
            dev: 0,
            ino: 0,
            filetype: self.filetype_of(cx),
            nlink: 0,
            size: 0,
            atim: 0,
            mtim: 0,
            ctim: 0,
        })
    }

    fn filetype(&mut self, cx: &mut Cx<'_>) -> Result<FileType, Errno> {
        Ok(self.filetype_of(cx))
    }

    fn readiness(&mut self, _: &mut Cx<'_>, write: bool) -> Readiness {
        match self {
            Stream::Input if !write => Readiness::HostInput,
            _ => Readiness::Now(0),
        }
    }
}
