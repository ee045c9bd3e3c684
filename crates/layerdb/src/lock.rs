//! The database's lock: a `flock` on `<root>/plies/<driver>/lock`.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::error::{Error, Result, io_err};

/// How long [`take`] waits for the lock before it gives up.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Takes the lock at `path`, exclusive or shared, waiting up to [`LOCK_WAIT`].
pub(crate) fn take(path: &Path, exclusive: bool) -> Result<File> {
    let file = File::options()
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
                let holder = rustix::fs::fstat(&file)
                    .ok()
                    .and_then(|st| plies_layerstore::flock_holder(st.st_dev, st.st_ino));
                return Err(Error::Busy {
                    path: path.to_path_buf(),
                    holder,
                    waited: LOCK_WAIT,
                });
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("flock", path, e)),
        }
    }
    Ok(file)
}
