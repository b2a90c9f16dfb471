//! meridian load generators, comparisons and reports.
//!
//! - [`turn`]: `meridian bench turn`, a TURN load generator with a comparison mode against
//!   coturn and an in-bench kernel-floor forwarder.

pub mod turn;
