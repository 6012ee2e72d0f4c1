//! Talking to a running guest: SSH (exec, shell) and readiness waits.

pub mod ssh;
