//! Getting frames into the model: recordings ([`recording`]) and live TCP
//! producers ([`server`]). Both decode frames and hand them to
//! [`Model::apply`](crate::Model::apply). The server also streams its
//! model to viewers ([`viewer`]).

pub mod recording;
pub mod server;
pub mod viewer;
