//! nemotron-studio: the desktop app of nemotron-rt. Expert-routing heatmaps, live token speed
//! and backends side by side, built on the library's public API only.
//!
//! [`state::AppState`] holds everything and is driven by worker threads through messages; the
//! [`views`] draw it, one panel per file; [`app`] lays them out in a window.

pub mod app;
pub mod colormap;
pub mod export;
pub mod headless;
pub mod heatmap;
pub mod recent;
pub mod state;
pub mod views;
mod worker;
