//! Reading the kernel's small text files (`/sys/module/…/parameters/*`,
//! `/proc/self/uid_map`) with the fewest system calls: these are read by every
//! command that opens a store, to check its probe cache.

use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// A sysfs attribute's text. sysfs hands an attribute over whole, at most a
/// page, in the first `read`: a read that leaves room in the buffer is the end
/// (open, read, close; no `stat` for a size hint, no read that returns 0).
pub(crate) fn read_attribute(path: impl AsRef<Path>) -> io::Result<String> {
    let fd = rustix::fs::open(
        path.as_ref(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // On the stack: the values are a few bytes, read on every open of a store.
    let mut buf = [0u8; 4096 + 1];
    let n = rustix::io::retry_on_intr(|| rustix::io::read(&fd, &mut buf))?;
    if n == buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is longer than a page", path.as_ref().display()),
        ));
    }
    std::str::from_utf8(&buf[..n])
        .map(str::to_owned)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A procfs file's text, read until `read` returns 0 (a seq_file may stop short
/// of the buffer before its end), without a `stat` for a size hint.
pub(crate) fn read_proc(path: impl AsRef<Path>) -> io::Result<String> {
    let fd = rustix::fs::open(
        path.as_ref(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_procfs_file_past_its_first_read() {
        // Several reads' worth in any process (about 1 KiB per mapping); its
        // last mapping is the vsyscall page on x86_64, else the stack or vdso.
        let smaps = read_proc("/proc/self/smaps").unwrap();
        assert!(smaps.len() > 3 * 4096, "{} bytes", smaps.len());
        assert!(smaps.ends_with('\n'));
        let last_mapping = smaps
            .lines()
            .rfind(|l| l.contains('-') && l.split_whitespace().count() >= 5)
            .unwrap();
        assert!(last_mapping.contains('['), "{last_mapping}");
        let uid_map = read_proc("/proc/self/uid_map").unwrap();
        assert_eq!(
            uid_map,
            std::fs::read_to_string("/proc/self/uid_map").unwrap()
        );
    }

    #[test]
    fn reads_a_sysfs_attribute_in_one_read() {
        let online = read_attribute("/sys/devices/system/cpu/online").unwrap();
        assert_eq!(
            online,
            std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap()
        );
        let missing = read_attribute("/sys/module/no-such-module/parameters/x").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
