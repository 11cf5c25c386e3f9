//! Helpers shared by the integration tests in `tests/tests/` (reading run file tests
//! for the compiled path).

pub mod runfile;
