//! One module per trait op (or family of closely related ops), each paired with its shader in
//! `shaders/`.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod embed;
pub(crate) mod linear;
pub(crate) mod mamba;
pub(crate) mod moe;
pub(crate) mod rms_norm;
pub(crate) mod top_candidates;
