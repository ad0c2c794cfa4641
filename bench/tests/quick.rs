//! `make test` runs the whole suite in quick mode, so no scenario can rot: every scenario must
//! run to its end and report a finite number for every row. Speed is not checked here.

use std::process::Command;

#[test]
fn every_scenario_runs_in_quick_mode() {
    if !paddock_tests::require_root() {
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    let bench = paddock_tests::binary("paddock-bench");
    let list = Command::new(&bench)
        .arg("--list")
        .output()
        .expect("run paddock-bench --list");
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(!names.is_empty(), "paddock-bench --list names no scenario");
    let run = Command::new(&bench)
        .arg("--quick")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run paddock-bench --quick");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "paddock-bench --quick failed:\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("latest.json")).expect("latest.json"),
    )
    .expect("latest.json is JSON");
    assert_eq!(json["quick"], true);
    let scenarios = json["scenarios"].as_array().expect("scenarios");
    let ran: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(ran, names, "every listed scenario ran, in order");
    for scenario in scenarios {
        let name = &scenario["name"];
        assert!(scenario["error"].is_null(), "{name}: {}", scenario["error"]);
        let rows = scenario["rows"].as_array().expect("rows");
        assert!(!rows.is_empty(), "{name} reported no row");
        for row in rows {
            let value = row["value"].as_f64();
            assert!(
                value.is_some_and(f64::is_finite),
                "{name}: {} has no finite value: {row}",
                row["metric"]
            );
        }
    }
    let markdown = std::fs::read_to_string(out.path().join("latest.md")).expect("latest.md");
    for name in &names {
        assert!(
            markdown.contains(&format!("(`{name}`")),
            "latest.md lacks {name}"
        );
    }
}
