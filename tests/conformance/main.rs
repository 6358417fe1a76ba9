//! Backend conformance: every op of the `Backend` trait on every backend present, against the
//! CPU backend, on random inputs of awkward sizes. A backend that is absent is skipped with a
//! message saying why.

mod attention;
mod common;
mod elementwise;
mod linear;
mod mamba;
mod moe;
mod sampling;
