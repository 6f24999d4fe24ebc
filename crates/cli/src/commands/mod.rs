pub mod audit;
pub mod demo;
pub mod diff;
pub mod proposals;
pub mod vote;
