//! Envfile.lock (skeleton).
