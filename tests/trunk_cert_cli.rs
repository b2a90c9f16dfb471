//! `meridian trunk-cert`: a cluster CA and node certificates that `[trunk]` loads, each naming
//! its node; the CA is reused on a second run; bad input is refused clearly.

mod common;

use common::TempDir;
use meridian_trunk::tls::TlsMaterial;

fn run(args: &[&str]) -> std::process::Output {
    common::meridian_command()
        .arg("trunk-cert")
        .args(args)
        .output()
        .expect("run meridian trunk-cert")
}

#[test]
fn makes_a_ca_and_node_certificates_that_load() {
    let dir = TempDir::new("trunk-cert");
    let d = dir.path().join("pki");
    let d = d.to_str().unwrap();
    let out = run(&["--dir", d, "--node", "fra-1", "--node", "sgp-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = std::path::Path::new(d).join("ca.pem");
    let ca_before = std::fs::read(&ca).unwrap();
    // A second run reuses the CA: a node certified later trusts the same root.
    let out = run(&["--dir", d, "--node", "gru-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    for node in ["fra-1", "sgp-1", "gru-1"] {
        let p = |f: String| std::path::Path::new(d).join(f);
        let m =
            TlsMaterial::from_pem_files(&ca, &p(format!("{node}.pem")), &p(format!("{node}.key")))
                .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!(m.own_node().as_deref(), Some(node));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p(format!("{node}.key")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{node}.key is readable by others");
    }
    // Existing files are never overwritten.
    let out = run(&["--dir", d, "--node", "fra-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fra-1.pem"));
}

#[test]
fn bad_input_is_refused() {
    let dir = TempDir::new("trunk-cert-bad");
    let d = dir.path().to_str().unwrap().to_string();
    let out = run(&["--dir", &d, "--node", "no spaces"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node \"no spaces\""));
    let out = run(&["--dir", &d, "--days", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--days"));
}
