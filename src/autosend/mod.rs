//! The AutoSend API client.

pub mod pacing;
