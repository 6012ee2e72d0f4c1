//! OCI registries as a box source: the distribution API with its authentication
//! (registry), the image documents (image), pulling an image into the store as a
//! container box (pull), and the run settings its config gives machines (run).

mod image;
mod pull;
mod registry;
mod run;

pub use pull::{pull, Pulled};
pub use run::{ImageRun, ImageUser};
