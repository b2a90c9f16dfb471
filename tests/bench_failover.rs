//! `meridian bench failover`, small, end to end: it starts its own redis-server and three
//! nodes behind delay shims with the trunk between them, a device on eu and re-homing players
//! nearest us and ap. Its JSON report must show, for the kill drill, the killed node detected,
//! every player that was on it recovered on another region with a measured gap, and for the
//! partition drill every player behind it recovered elsewhere, and for the
//! directory drill nobody re-homed; in every drill, every acknowledged control reached the device
//! exactly once. Its SVG plot is written; a bad drill name is refused.

use std::process::Command;

use serde_json::Value;

#[test]
fn failover_drills_recover_every_session_and_lose_no_control() {
    let dir = std::env::temp_dir().join(format!("bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("gaps.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["bench", "failover", "--players", "4", "--devices", "1"])
        .args([
            "--repeat",
            "2",
            "--outage-secs",
            "2",
            "--partition-secs",
            "4",
        ])
        .args(["--json", "--plot"])
        .arg(&plot)
        .output()
        .expect("run meridian bench failover");
    assert!(
        out.status.success(),
        "bench failover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let drills = r["drills"].as_array().expect("drills");
    assert_eq!(drills.len(), 4, "{r}");
    for d in drills {
        assert!(d["acked"].as_u64().unwrap() > 0, "{d}");
        assert_eq!(d["acked_lost"], 0, "an acknowledged control was lost: {d}");
        assert_eq!(d["duplicated"], 0, "a control was applied twice: {d}");
        assert_eq!(d["reps"].as_array().unwrap().len(), 2);
        assert!(d["detection_ms_max"].as_f64().is_some(), "{d}");
        assert!(d["steady_ms_max"].as_f64().is_some(), "{d}");
    }
    let kill = &drills[0];
    assert_eq!(kill["drill"], "kill");
    // Half of the 4 players were on the killed node, in each of the 2 repetitions.
    assert_eq!(kill["affected"], 4, "{kill}");
    assert_eq!(
        kill["recovered"], 4,
        "every player on the killed node got media back: {kill}"
    );
    let gaps: Vec<f64> = kill["reps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| {
            x["gaps_ms"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_f64)
        })
        .collect();
    assert_eq!(gaps.len(), 4, "{kill}");
    assert!(gaps.iter().all(|g| *g > 0.0), "{gaps:?}");
    let drain = &drills[1];
    assert_eq!(drain["drill"], "drain");
    assert_eq!(drain["affected"], 4, "{drain}");
    assert_eq!(
        drain["recovered"], 4,
        "every player on the drained node moved make-before-break: {drain}"
    );
    let gaps = drain["reps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["gaps_ms"].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(gaps, 4, "one gap per moved player: {drain}");
    // The partition: us's players notice the silence and re-home, each with one measured gap.
    let partition = &drills[2];
    assert_eq!(partition["drill"], "partition");
    assert_eq!(partition["affected"], 4, "{partition}");
    assert_eq!(
        partition["recovered"], 4,
        "every player behind the partition got media back elsewhere: {partition}"
    );
    let gaps = partition["reps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["gaps_ms"].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(gaps, 4, "{partition}");
    let directory = &drills[3];
    assert_eq!(directory["drill"], "directory");
    assert_eq!(
        directory["rehomed"], 0,
        "a session dropped while Redis was down: {directory}"
    );
    assert_eq!(directory["recovered"], 8, "{directory}");
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    assert!(
        svg.starts_with("<svg")
            && svg.contains("kill (n=4")
            && svg.contains("drain (n=4")
            && svg.contains("partition (n=4")
            && svg.contains("directory (n=8"),
        "{svg}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let bad = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["bench", "failover", "--drills", "kill,meteor"])
        .output()
        .expect("run meridian bench failover");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown drill \"meteor\"")
            && err.contains("kill, drain, partition, directory"),
        "{err}"
    );
}
