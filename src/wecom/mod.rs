//! The WeCom API: HTTP calls, typed message bodies, errcode classes and cached access tokens.

pub mod client;
pub mod error;
pub mod message;
pub mod token;

pub use client::{AccessToken, Client, Reply, Transport};
pub use error::{ErrorClass, classify};
