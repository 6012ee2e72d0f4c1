//! OCI registries as a box source: the distribution API with its authentication
//! (registry), the image documents (image), and pulling an image into the store as a
//! container box (pull).

mod image;
mod pull;
mod registry;

pub use pull::{pull, Pulled};
