//! Getting frames into the model: recordings ([`recording`]) and live TCP
//! producers ([`server`]). Both decode frames and hand them to
//! [`Model::apply`](crate::Model::apply). The server also streams its
//! model to viewers (`viewer`). The server and the viewers need the
//! `server` feature (on by default).

#[cfg(feature = "server")]
mod accept;
#[cfg(feature = "server")]
mod admission;
#[cfg(feature = "server")]
pub mod budget;
#[cfg(feature = "server")]
mod connection;
#[cfg(feature = "server")]
mod give_back;
#[cfg(feature = "server")]
mod producer;
#[cfg(feature = "server")]
mod record_dir;
pub mod recording;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod state;
#[cfg(feature = "server")]
pub mod viewer;
#[cfg(feature = "server")]
mod viewer_conn;
