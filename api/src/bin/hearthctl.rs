//! `hearthctl`: placeholder replaced below.
fn main() {}
