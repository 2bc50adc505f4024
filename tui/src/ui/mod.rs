//! The terminal UI: state ([`app`]), input ([`input`]), rendering
//! ([`render`], one module per view) and [`theme`]; [`run`] drives them.

pub mod app;
pub mod input;
pub mod render;
pub mod run;
pub mod theme;
