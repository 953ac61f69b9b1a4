//! The rules of a callback, shared by every role that handles one: where it may be sent
//! (`guard`, checked at submission by the gateway and again at delivery by the dispatcher),
//! which credentials and signing secret an endpoint's callbacks carry (`policy`, resolved by the
//! operator, the gateway and `ferry dev`) and how a callback is signed (`sign`).

pub mod guard;
pub mod policy;
pub mod sign;

pub use guard::Guard;
