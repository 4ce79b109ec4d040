//! Production controls shared across replicas through the store: virtual keys (`keys`), rate
//! limits (`limits`), budgets and spend (`spend`), and `gate`, which puts them together for the
//! controls middleware, the handlers' usage hook and the admin API.

pub mod gate;
pub mod keys;

pub use gate::Controls;
