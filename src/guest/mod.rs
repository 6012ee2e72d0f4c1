//! Talking to a running guest: SSH (exec, shell) and readiness waits, and reading
//! what a guest reports of itself (its listening sockets) as the untrusted text it is.

pub mod proc_net;
pub mod ssh;
