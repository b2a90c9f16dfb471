//! `meridian bench route` and `meridian bench directory`, small, end to end: each starts its
//! own redis-server and three nodes (the route bench behind delay shims), and its JSON report
//! must show every routed player on its nearest region receiving media, the room list served
//! cluster-wide without Redis commands, and every SIGKILLed node noticed by both others.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run meridian bench");
    assert!(
        out.status.success(),
        "meridian bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn route_places_every_measured_player_on_its_nearest_region() {
    let r = bench(&[
        "route",
        "--clients",
        "4",
        "--direct",
        "2",
        "--devices",
        "1",
        "--entry",
        "farthest",
    ]);
    let sessions = r["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3 * (4 + 2), "{r}");
    for s in sessions {
        assert!(s["error"].is_null(), "a session failed: {s}");
        assert_eq!(s["chosen"], s["nearest"], "{s}");
        assert!(s["to_media_ms"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        if s["mode"] == "routed" {
            // Entering at the farthest region (RTT 180 ms) and measuring, it still joined the
            // nearest (20 ms) and says what it measured there.
            assert_eq!(s["entry"], s["group"].as_str().map(far_of).unwrap(), "{s}");
            let rtt = s["measured_rtt_ms"].as_f64().expect("measured RTT");
            assert!(
                (18.0..60.0).contains(&rtt),
                "measured {rtt} ms for a 20 ms path: {s}"
            );
            // Its room is homed where its device measured nearest, the same region.
            assert_eq!(s["reason"], "room_home", "{s}");
        }
    }
    assert_eq!(r["on_nearest_pct"], 100.0, "{r}");
    for d in r["devices"].as_array().expect("devices") {
        assert_eq!(d["chosen"], d["nearest"], "a device was misplaced: {d}");
        assert_eq!(d["reason"], "nearest", "placed by its measurement: {d}");
    }
}

/// The farthest region of a group with the default RTTs 20/90/180 (group g nearest region g,
/// region g+2 the farthest).
fn far_of(g: &str) -> &'static str {
    match g {
        "eu" => "ap",
        "us" => "eu",
        _ => "us",
    }
}

#[test]
fn directory_load_is_flat_and_dead_nodes_are_noticed() {
    let r = bench(&[
        "directory",
        "--sessions",
        "90",
        "--devices",
        "9",
        "--live",
        "1",
        "--window",
        "3",
        "--room-lists",
        "10",
        "--kills",
        "3",
    ]);
    let l = &r["load"];
    assert_eq!(l["failed_sessions"], 0, "{l}");
    assert_eq!(
        l["room_list_devices_listed"], 9,
        "every node lists every device: {l}"
    );
    let per_node = l["redis_per_node_per_sec"].as_f64().unwrap();
    assert!(
        per_node > 0.0 && per_node <= 50.0,
        "{per_node} commands/s per node: {l}"
    );
    let extra = l["extra_commands_per_room_list"].as_f64().unwrap();
    assert!(
        extra.abs() < 1.0,
        "a room list cost {extra} Redis commands: {l}"
    );
    let k = &r["kills"];
    assert_eq!(k["undetected"], 0, "{k}");
    let samples = k["detection_ms"].as_array().unwrap();
    assert_eq!(samples.len(), 2 * 3, "two observers per kill: {k}");
    for s in samples {
        // Default settings: death after 800 ms; a generous bound for a loaded CI machine.
        assert!(s.as_f64().unwrap() < 3000.0, "{k}");
    }
}
