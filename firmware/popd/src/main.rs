//! `popd`: the PoP appliance daemon (being written).
fn main() {}
