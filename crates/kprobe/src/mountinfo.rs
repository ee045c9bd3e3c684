//! `/proc/self/mountinfo`: the mount points of this process's mount namespace.

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The mount points of `mountinfo` text (field 5 of each line), in order;
/// lines it cannot read are skipped.
fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (head, _tail) = line.split_once(" - ")?;
            head.split(' ').nth(4).map(unescape)
        })
        .collect()
}

/// The mount points of this process's mount namespace, from `/proc/self/mountinfo`,
/// in its order (octal escapes undone, bytes kept as they are).
///
/// # Errors
/// Reading `/proc/self/mountinfo` failed.
pub fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    // Field separators are ASCII; a non-UTF-8 mount point keeps its bytes below.
    let text = bytes_as_chars(&text);
    Ok(parse_mount_points(&text))
}

/// Maps each byte to the `char` of the same value, so that no byte is lost and
/// [`unescape`] can map them back.
fn bytes_as_chars(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …); `s` holds one
/// `char` per byte of the original.
fn unescape(s: &str) -> PathBuf {
    let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /var/lib/my\\040store rw,relatime shared:9 - xfs /dev/vdb rw,attr2,inode64,prjquota
31 30 0:28 / /var/lib/my\\040store/sub rw - tmpfs tmpfs rw,size=100k
garbage
";

    #[test]
    fn parses_mount_points() {
        assert_eq!(
            parse_mount_points(MOUNTINFO),
            [
                Path::new("/"),
                Path::new("/var/lib/my store"),
                Path::new("/var/lib/my store/sub")
            ]
        );
    }

    #[test]
    fn keeps_bytes_that_are_not_utf8() {
        let text = b"40 22 0:30 / /mnt/\xff\\040x rw - tmpfs tmpfs rw\n";
        let parsed = parse_mount_points(&bytes_as_chars(text));
        assert_eq!(
            parsed,
            [PathBuf::from(std::ffi::OsString::from_vec(
                b"/mnt/\xff x".to_vec()
            ))]
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), Path::new("a b\tc\\d"));
        assert_eq!(unescape("trailing\\04"), Path::new("trailing\\04"));
    }
}
