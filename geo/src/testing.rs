//! Test support: a real `redis-server` (Debian's package) on a free loopback port, started
//! and stopped by the test that owns it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether a Redis answers PING on the port.
fn pong(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers (at most 10 s).
    pub fn start() -> RedisServer {
        match RedisServer::try_start() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`RedisServer::start`], with an error instead of a panic.
    pub fn try_start() -> Result<RedisServer, String> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("redis-server is not installed (Debian: apt-get install redis-server; scripts/test.sh installs it)".into());
        }
        for _ in 0..3 {
            let mut r = RedisServer {
                port: free_port(),
                child: None,
            };
            if r.restart() {
                return Ok(r);
            }
        }
        Err("redis-server did not start on a free loopback port within 10 s".into())
    }

    /// The `redis://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port; true once it answers.
    pub fn restart(&mut self) -> bool {
        self.stop();
        let Ok(child) = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if pong(self.port) {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command with `redis-cli` and returns its output (empty when it cannot run).
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Calls per command from `INFO commandstats` (e.g. "hset" → 1200).
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        parse_commandstats(&self.cli(&["INFO", "commandstats"]))
    }

    /// Commands the server has processed (from INFO stats).
    pub fn commands_processed(&self) -> u64 {
        self.cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `cmdstat_hset:calls=12,usec=...` lines → {"hset": 12}.
pub fn parse_commandstats(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commandstats_lines_parse() {
        let m = super::parse_commandstats(
            "# Commandstats\r\ncmdstat_hset:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\ncmdstat_publish:calls=7,usec=1\r\ngarbage\r\n",
        );
        assert_eq!(m.get("hset"), Some(&12));
        assert_eq!(m.get("publish"), Some(&7));
        assert_eq!(m.len(), 2);
    }
}
