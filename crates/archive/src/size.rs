//! Disk usage of a layer directory, like Docker's directory.Size.
