//! concurrent tests
