//! The test suite's own layout: with one test binary (Cargo.toml's `autotests = false`),
//! a file in tests/ that tests/tests.rs does not declare would never be compiled or run.

use std::path::Path;

#[test]
fn every_file_in_tests_is_a_module_of_the_one_test_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let root = std::fs::read_to_string(tests.join("tests.rs")).unwrap();
    let declared: Vec<&str> = root.lines().filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';')).collect();
    let mut undeclared = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let module = match name.strip_suffix(".rs") {
            Some(module) if module != "tests" => module.to_string(),
            _ => continue,
        };
        if !declared.contains(&module.as_str()) {
            undeclared.push(format!("tests/{name}"));
        }
    }
    assert!(
        undeclared.is_empty(),
        "{} never compiled: not declared in tests/tests.rs; add a `mod NAME;` line there for each",
        undeclared.join(", ")
    );
}
