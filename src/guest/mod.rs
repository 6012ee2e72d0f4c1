//! Talking to a running guest: SSH (exec, shell, copy) and readiness waits.
