//! Wire formats spoken at the edges, each converting to and from [`crate::canonical`].

pub mod openai;
