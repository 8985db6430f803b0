//! `wit/` parses, and names every interface the kernel serves.

#[test]
fn kernel_wit_parses_and_has_its_interfaces() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(&dir).expect("wit/ must parse");
    let pkg = &resolve.packages[package];
    assert_eq!(pkg.name.to_string(), "tabi:kernel@0.1.0");
    for name in ["filesystem", "clocks", "random", "environment"] {
        let id = pkg
            .interfaces
            .get(name)
            .unwrap_or_else(|| panic!("interface {name}"));
        assert!(
            !resolve.interfaces[*id].functions.is_empty(),
            "{name} has no functions"
        );
    }
    let fs = &resolve.interfaces[pkg.interfaces["filesystem"]];
    for f in [
        "read",
        "write",
        "open-at",
        "read-directory",
        "rename-at",
        "renumber",
    ] {
        assert!(fs.functions.contains_key(f), "filesystem lacks {f}");
    }
}
