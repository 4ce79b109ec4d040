//! Production controls shared across replicas through the store: virtual keys (`keys`), rate
//! limits (`limits`), budgets and spend (`spend`), answers' post-answer writes gathered into one
//! (`settle`), pre-admission far from every limit on a remote store (`headroom`), and `gate`, which puts them together for the controls middleware, the handlers'
//! usage hook and the admin API.

pub mod gate;
pub mod headroom;
pub mod keys;
pub mod limits;
pub mod settle;
pub mod spend;

pub use gate::{Admitted, Controls, Refused, Ticket};
