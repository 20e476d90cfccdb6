//! No code. See Cargo.toml: this crate only asks for features, so that a build of one crate
//! resolves its dependencies' features as the whole workspace's build does.
