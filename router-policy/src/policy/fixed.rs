//! The fixed policy: the first backend that passes the hard rules, in route order.

use super::api::{Policy, PolicyInput};
use crate::decision::Decision;

/// Serves from the first allowed backend in the order the route lists them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedOrder;

impl Policy for FixedOrder {
    fn name(&self) -> &str {
        "fixed"
    }

    fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        match input.allowed().first() {
            Some(first) => input.pick(first, self.name(), "fixed-order"),
            None => self.reject(input),
        }
    }
}
