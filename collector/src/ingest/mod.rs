//! Getting frames into the model: recordings ([`recording`]) and live TCP
//! producers ([`server`]). Both decode frames and hand them to
//! [`Model::apply`](crate::Model::apply).

pub mod recording;
pub mod server;
