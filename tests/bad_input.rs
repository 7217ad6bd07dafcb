//! Keeps `docs/bad-input.md` (every distinct bad input the project refuses) and the tests in
//! sync: each row names a test function that exists, its case text is found verbatim in that
//! test's file (or is a file of the repository: a corpus entry, a chart values file), every bad
//! Helm values file has a row, rows are numbered in order, and there are at least 60.

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The cells of a table row (`\|` is a literal bar).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn code(cell: &str) -> &str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or_else(|| panic!("not a code span: {cell}"))
}

#[test]
fn the_bad_input_table_matches_the_tests() {
    let table = std::fs::read_to_string(Path::new(ROOT).join("docs/bad-input.md")).unwrap();
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(cells)
        .collect();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let [n, area, input, _where, _message, test, case] = row.as_slice() else {
            problems.push(format!("row {}: {} cells", i + 1, row.len()));
            continue;
        };
        if n.parse::<usize>().ok() != Some(i + 1) {
            problems.push(format!("row {}: numbered {n}", i + 1));
        }
        if !seen.insert((area.clone(), input.clone())) {
            problems.push(format!("row {n}: {area} / {input} listed twice"));
        }
        let (file, function) = code(test)
            .split_once("::")
            .unwrap_or_else(|| panic!("row {n}: test {test} is not <file>::<function>"));
        let Ok(source) = std::fs::read_to_string(Path::new(ROOT).join(file)) else {
            problems.push(format!("row {n}: {file} does not exist"));
            continue;
        };
        if !source.contains(&format!("fn {function}(")) {
            problems.push(format!("row {n}: no fn {function} in {file}"));
        }
        let case = code(case);
        if !source.contains(case) && !Path::new(ROOT).join(case).is_file() {
            problems.push(format!("row {n}: case {case:?} not in {file}"));
        }
    }
    let listed: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.last())
        .map(|c| code(c))
        .collect();
    for entry in std::fs::read_dir(Path::new(ROOT).join("tests/chart/bad")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let path = format!("tests/chart/bad/{name}");
        if name.ends_with(".yaml") && !listed.contains(path.as_str()) {
            problems.push(format!("{path} has no row"));
        }
    }
    println!("{} bad inputs listed, each with a test", rows.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(rows.len() >= 60, "only {} rows", rows.len());
}
