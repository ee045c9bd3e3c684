//! Changes between layer trees (Docker's archive.Change semantics).
