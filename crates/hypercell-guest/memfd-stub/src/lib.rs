//! Empty stand-in for the `memfd` crate in the no_std guest build.
#![no_std]
