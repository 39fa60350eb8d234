mod machine;

fn main() {}
