//! OCI registries as a box source: the distribution API with its authentication
//! (registry), the image documents (image), pulling an image into the store as a
//! container box (pull), pushing a container machine as an image (push), and the run
//! settings an image's config gives machines (run).

mod image;
mod pull;
mod push;
mod registry;
mod run;

pub use pull::{pull, Pulled};
pub use push::{push, push_disk};
pub use run::{ImageRun, ImageUser};
