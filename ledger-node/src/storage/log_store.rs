//! The Raft log on sled (being written).
