//! The database's lock: a `flock` on `<root>/plies/<driver>/lock`.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::error::{Error, Result, io_err};

/// How long [`take`] waits for the lock before it gives up.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Takes the lock at `path`, exclusive or shared, waiting up to [`LOCK_WAIT`].
pub(crate) fn take(path: &Path, exclusive: bool) -> Result<File> {
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))?;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_micros(500);
    loop {
        match rustix::fs::flock(&file, op) {
            Ok(()) => break,
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(Error::Busy {
                    path: path.to_path_buf(),
                    holder: holder.trim().to_owned(),
                    waited: LOCK_WAIT,
                });
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("flock", path, e)),
        }
    }
    if exclusive {
        // Who holds it, for the message a waiter gives up with.
        let stamped = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()));
        if let Err(e) = stamped {
            tracing::debug!(lock = %path.display(), error = %e, "holder not written");
        }
    }
    Ok(file)
}
