//! SELinux mount labels in mount data, formatted exactly as Docker formats them.

/// Appends an SELinux `context="<label>"` option to `opts`, as Docker's
/// `label.FormatMountLabel` does: an empty `label` leaves `opts` unchanged, empty
/// `opts` gives only the context option. The label is quoted the way Go's `%q` quotes
/// it (plain labels come out as `"label"`).
pub fn format_mount_label(opts: &str, label: &str) -> String {
    if label.is_empty() {
        return opts.to_string();
    }
    let quoted = go_quote(label);
    if opts.is_empty() {
        format!("context={quoted}")
    } else {
        format!("{opts},context={quoted}")
    }
}

/// The bytes [`format_mount_label`] adds to non-empty options for `label`.
pub(crate) fn label_suffix_len(label: Option<&str>) -> usize {
    match label {
        None | Some("") => 0,
        Some(l) => ",context=".len() + go_quote(l).len(),
    }
}

/// Checks that `label` survives mount data unchanged: printable, no quote or backslash.
pub(crate) fn check_label(label: &str) -> crate::Result<()> {
    let reason = if label.contains('"') || label.contains('\\') {
        Some("it holds a quote or a backslash")
    } else if label.chars().any(|c| c.is_control()) {
        Some("it holds a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(crate::Error::InvalidLabel {
            label: label.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

// Go's %q for the characters a label can hold.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_docker() {
        assert_eq!(format_mount_label("", ""), "");
        assert_eq!(format_mount_label("ro", ""), "ro");
        assert_eq!(
            format_mount_label("", "system_u:object_r:container_file_t:s0:c1,c2"),
            "context=\"system_u:object_r:container_file_t:s0:c1,c2\""
        );
        assert_eq!(
            format_mount_label("lowerdir=/a", "l"),
            "lowerdir=/a,context=\"l\""
        );
        assert_eq!(format_mount_label("", "a\"b"), "context=\"a\\\"b\"");
        assert_eq!(label_suffix_len(Some("l")), ",context=\"l\"".len());
    }

    #[test]
    fn refuses_labels_that_change_in_data() {
        assert!(check_label("a\"b").is_err());
        assert!(check_label("a\nb").is_err());
        assert!(check_label("system_u:object_r:x:s0:c1,c2").is_ok());
    }
}
